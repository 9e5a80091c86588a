"""The store's two payload file formats: a document file (DocParams' own safetensors format, see
prag_core/pairs/doc_params.py), read whole, and a shard (several documents in one safetensors file, a
flattened tensor per slot; shard_bytes writes one), read one slot at a time through safetensors'
memory-mapped safe_open.

A read checks the bytes against their sha256 (the catalog's, and for a slot its shard header's), then every
field and tensor as DocParams.load checks; a damaged payload is a DocParamsError naming the file (and slot).
Which payload files a store holds, and where, is store.py's (folder.py: only inside its folder, never
through a symbolic link; a document file is opened with O_NOFOLLOW).
"""

import hashlib
import json
import math
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as safetensors_bytes

from prag_core.pairs.doc_params import DocParams, DocParamsError

SHARD_FORMAT = "prag.shard"


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


def _digest(flat):
    return sha256_hex(flat.contiguous().view(torch.uint8).numpy())


def read_document_file(path, fingerprint=None, device="cpu", dtype=None, digest=None):
    """(DocParams, bytes) of a document file, its bytes checked against `digest` when given."""
    try:
        with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)), "rb") as f:  # a link: ELOOP
            data = f.read()
    except OSError as err:
        raise DocParamsError(f"{path}: unreadable ({err.strerror})") from None
    if digest is not None and sha256_hex(data) != digest:
        raise DocParamsError(f"{path}: sha256 of its bytes does not match the catalog: corrupted")
    try:
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
        metadata, tensors = header.get("__metadata__") or {}, load_safetensors_bytes(data)
    except (ValueError, AttributeError, SafetensorError) as err:
        raise DocParamsError(f"{path}: not a readable safetensors file ({err})") from None
    return DocParams.decode(path, metadata, tensors, fingerprint, device, dtype), data


class Shard:
    """An open shard: its safe_open handle (memory-mapped) and decoded header."""

    def __init__(self, path):
        self.path = path
        try:
            self.handle = safe_open(str(path), framework="pt")
            metadata = self.handle.metadata() or {}
        except (SafetensorError, OSError, ValueError) as err:
            raise DocParamsError(f"{path}: not a readable safetensors shard ({err})") from None
        if metadata.get("format") != SHARD_FORMAT:
            raise DocParamsError(
                f"{path}: metadata field 'format' is {metadata.get('format')!r}, expected {SHARD_FORMAT!r}"
            )
        try:
            self.common, self.layouts, self.documents = (
                json.loads(metadata[k]) for k in ("common", "layouts", "documents")
            )
        except (KeyError, json.JSONDecodeError) as err:
            raise DocParamsError(
                f"{path}: metadata fields 'common'/'layouts'/'documents' unreadable ({type(err).__name__}: {err})"
            ) from None
        for slot, record in enumerate(self.documents if isinstance(self.documents, list) else [None]):
            if not (
                isinstance(self.common, dict)
                and isinstance(self.layouts, list)
                and isinstance(record, dict)
                and isinstance(record.get("metadata"), dict)
                and isinstance(record.get("sha256"), str)
                and record.get("layout") in range(len(self.layouts))
            ):
                raise DocParamsError(f"{path}: metadata field 'documents' is malformed at slot {slot}")

    def field(self, slot, name):
        """A metadata field of the document in `slot`, decoded (the raw string if it is not JSON)."""
        value = {**self.common, **self.documents[slot]["metadata"]}.get(name)
        try:
            return None if value is None else json.loads(value)
        except json.JSONDecodeError:
            return value

    def read(self, slot, fingerprint=None, device="cpu", dtype=None, digest=None):
        """The DocParams in `slot`: its bytes checked against their sha256 (the header's, and `digest` when
        given), then as DocParams.load checks."""
        if slot >= len(self.documents):
            raise DocParamsError(f"{self.path}: has no slot {slot}")
        where = f"{self.path} [slot {slot}, document {self.field(slot, 'doc_id')!r}]"
        try:
            flat = self.handle.get_tensor(str(slot))
        except (SafetensorError, OSError, ValueError) as err:
            raise DocParamsError(f"{where}: unreadable tensor ({err})") from None
        record = self.documents[slot]
        actual = _digest(flat)
        if actual != record["sha256"] or digest not in (None, actual):
            raise DocParamsError(f"{where}: sha256 of the document's bytes does not match: corrupted")
        tensors, offset = {}, 0
        for name, shape in self.layouts[record["layout"]]:
            size = math.prod(shape)
            tensors[name] = flat[offset : offset + size].view(shape)
            offset += size
        if offset != flat.numel():
            raise DocParamsError(f"{where}: holds {flat.numel()} values, its layout {offset}")
        metadata = {**self.common, **record["metadata"]}
        return DocParams.decode(where, metadata, tensors, fingerprint, device, dtype)


def shard_bytes(docs_params, where):
    """(the safetensors bytes of a shard holding `docs_params` (DocParams, in slot order), each slot's sha256).

    Tensor "<slot>": the document's DocParams tensors, flattened and concatenated in the order of its layout.
    Header metadata (JSON values): format "prag.shard"; common (the DocParams metadata fields all its documents
    share); layouts ([[name, shape], ...] lists, one per distinct set of tensors); documents ([{metadata:
    the other fields, layout: i, sha256: of the slot's bytes}])."""
    encoded = [params.encode(where) for params in docs_params]
    common = {k: v for k, v in encoded[0][0].items() if all(m.get(k) == v for m, _ in encoded)}
    layouts, documents, tensors = [], [], {}
    for slot, (metadata, named) in enumerate(encoded):
        layout = [[name, list(named[name].shape)] for name in sorted(named)]
        if layout not in layouts:
            layouts.append(layout)
        tensors[str(slot)] = torch.cat([named[name].reshape(-1) for name, _ in layout])
        documents.append(
            {
                "metadata": {k: v for k, v in metadata.items() if k not in common},
                "layout": layouts.index(layout),
                "sha256": _digest(tensors[str(slot)]),
            }
        )
    header = {
        "format": SHARD_FORMAT,
        "format_version": "1",
        "common": json.dumps(common),
        "layouts": json.dumps(layouts),
        "documents": json.dumps(documents),
    }
    return safetensors_bytes(tensors, metadata=header), [d["sha256"] for d in documents]


def file_name(doc_id, digest):
    """A document file's name: a readable slug of its id, a hash of the id, the start of its bytes' sha256."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", doc_id)[:48].strip("._") or "doc"
    return f"{slug}-{hashlib.sha256(doc_id.encode('utf-8')).hexdigest()[:12]}.{digest[:12]}.safetensors"


def file_seq(path):
    return int(Path(path).name.split(".", 1)[0])

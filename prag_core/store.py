"""The parameter store: one safetensors file per document plus a manifest (DESIGN §4.3).

    <folder>/manifest.json       {"format": "prag.store", "format_version": 1, "layout": "files",
                                  "dtype": storage dtype ("float32", "bfloat16", "float16"),
                                  "fingerprint": model_fingerprint(model), "training": TrainConfig.to_dict(),
                                  "documents": {id: {"file": name, "sha256": sha256 of the text}}}
    <folder>/<name>.safetensors  DocParams.save, with meta doc_id and doc_sha256

Every write is atomic (temp file + os.replace). A document is *done* when its file
loads (every field and tensor checked), was trained for this model, from this text
(doc_sha256) and with this training config. `done` decides from the file itself,
not the manifest, so a run killed between a file and the manifest update loses
nothing; a corrupted file fails to load and its document is redone, with a warning.
A store belongs to one model: opening it with another model is a StoreError.

As a Mapping, a store is id -> DocParams, read lazily through doc_params' LRU cache.
The other layout, many documents per file, is shards.ShardedStore; shards.open_store picks by the manifest.
"""
import hashlib
import json
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from .corpus import write_text_atomic
from .doc_params import FINGERPRINT_FIELDS, DocParams, DocParamsError, load_cached

FORMAT = "prag.store"
FORMAT_VERSION = 1
LAYOUT = "files"


class StoreError(ValueError):
    """A store that cannot be used as asked (another model's, or an unreadable manifest); one line."""


def read_manifest(path, fingerprint):
    """The manifest at `path` (None if there is none yet), checked to be readable and built for the model
    with `fingerprint`; else StoreError."""
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        stored_fp = dict(manifest["fingerprint"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise StoreError(f"{path}: unreadable manifest ({type(err).__name__}: {err})") from None
    for key in FINGERPRINT_FIELDS:
        if stored_fp.get(key) != fingerprint.get(key):
            raise StoreError(
                f"{path.parent}: built for another model ({stored_fp.get('name_or_path') or '?'}; "
                f"fingerprint.{key} is {stored_fp.get(key)!r}, this model's is {fingerprint.get(key)!r}); "
                f"use the same model or another work directory")
    return manifest


def file_name(doc_id):
    """A safe, unique file name for a document id: a readable slug plus a hash of the id."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", doc_id)[:48].strip("._") or "doc"
    return f"{slug}-{hashlib.sha256(doc_id.encode('utf-8')).hexdigest()[:12]}.safetensors"


class Store(Mapping):
    """The store in `folder` for the model with `fingerprint`.

    training: the TrainConfig dict documents must have been trained with to count as done (building);
    None when only reading (serving). device / dtype: where loaded documents go.
    storage_dtype: the dtype ("float32", "bfloat16", "float16") put() writes the pairs in."""

    def __init__(self, folder, fingerprint, training=None, device="cpu", dtype=None, storage_dtype="float32"):
        self.folder = Path(folder)
        self.fingerprint, self.training, self.device, self.dtype = fingerprint, training, device, dtype
        self.storage_dtype = storage_dtype
        self.manifest_path = self.folder / "manifest.json"
        manifest = read_manifest(self.manifest_path, fingerprint) or {"documents": {}}
        try:
            self.documents = dict(manifest["documents"])
        except (KeyError, TypeError, ValueError) as err:
            raise StoreError(f"{self.manifest_path}: unreadable manifest ({type(err).__name__}: {err})") from None

    def path(self, doc_id):
        return self.folder / file_name(doc_id)

    def done(self, doc):
        """Whether `doc` (id, sha256) has a valid file trained from its text with this training config.
        A file that fails to load is reported with a warning (and will be redone)."""
        path = self.path(doc.id)
        if not path.is_file():
            return False
        try:
            params = DocParams.load(path, fingerprint=self.fingerprint)
        except DocParamsError as err:
            warnings.warn(f"{err}; re-encoding document {doc.id!r}", stacklevel=2)
            return False
        ok = (params.meta.get("doc_sha256") == doc.sha256 and params.meta.get("doc_id") == doc.id
              and (self.training is None or params.meta.get("training") == self.training))
        if ok:
            self.documents[doc.id] = {"file": path.name, "sha256": doc.sha256}
        return ok

    def put(self, doc, params):
        """Write a document's trained parameters (atomically, in storage_dtype) and record it; call flush() to
        save the manifest."""
        params = params.to(dtype=getattr(torch, self.storage_dtype))
        params.meta.update(doc_id=doc.id, doc_sha256=doc.sha256)
        params.save(self.path(doc.id))
        self.documents[doc.id] = {"file": self.path(doc.id).name, "sha256": doc.sha256}

    def retain(self, doc_ids):
        """Drop (manifest entry and file) every document not in `doc_ids`: they left the corpus."""
        for doc_id in set(self.documents) - set(doc_ids):
            (self.folder / self.documents.pop(doc_id)["file"]).unlink(missing_ok=True)

    def flush(self):
        """Write the manifest atomically."""
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "layout": LAYOUT, "dtype": self.storage_dtype,
                    "fingerprint": self.fingerprint, "training": self.training, "documents": self.documents}
        write_text_atomic(self.manifest_path, json.dumps(manifest, indent=1, sort_keys=True) + "\n")

    def close(self):
        """The end of a build: nothing is buffered here, so the same as flush()."""
        self.flush()

    def size_bytes(self):
        return sum((self.folder / e["file"]).stat().st_size for e in self.documents.values()
                   if (self.folder / e["file"]).is_file())

    def __getitem__(self, doc_id):
        if doc_id not in self.documents:
            raise KeyError(doc_id)
        return load_cached(self.folder / self.documents[doc_id]["file"], device=self.device, dtype=self.dtype,
                           fingerprint=self.fingerprint)

    def __iter__(self):
        return iter(self.documents)

    def __len__(self):
        return len(self.documents)

"""The sharded parameter store: many documents per safetensors file, for corpora of millions.

    <folder>/manifest.json      {"format": "prag.store", "format_version": 1, "layout": "sharded", "dtype": ...,
                                 "shard_size": N, "fingerprint": ..., "training": ...}
    <folder>/shards/<seq>.safetensors
                                up to N documents. Tensor "<slot>": the document's §4.3 tensors, flattened and
                                concatenated in the order of its layout. Header metadata (JSON values):
                                format "prag.shard"; common (the §4.3 metadata fields all its documents share);
                                layouts ([[name, shape], ...] lists, one per distinct set of tensors);
                                documents ([{metadata: the other fields, layout: i, sha256: of the slot's bytes}])
    <folder>/index.safetensors  id -> (shard, slot, text sha256), columns sorted by key = the first 8 bytes of
                                sha256(id); metadata: shards ([[name, tag of its training config], ...]), next_shard
    <folder>/journal.jsonl      changes since the index was written: {"shard", "tag", "ids", "sha256"} per shard
                                written, {"drop": [ids]} per removal

Opening does not grow with the store: the index's columns are memory-mapped (numpy views
of the file, nothing parsed), a lookup is a binary search on `key`, and only the journal
(kept short by compaction) is read. Reading a document opens its shard with safetensors'
memory-mapped `safe_open`, reads that one slot, checks its sha256 and then every field
and tensor as DocParams.load does.

Writing (one writer, the build): put() buffers; flush() writes every full shard (temp
file + rename), then appends one fsynced journal line; close() writes the last, partial
shard and compacts the journal into a new index (atomic), deleting shard files no entry
uses. A crash loses only documents still buffered (fewer than N). A shard written but not
journaled is adopted by the next build (its number is at least next_shard); a torn last
journal line is dropped. A document is *done* when the index has it with the same text
sha256 in a shard trained with the same config (the tag); shard bytes are not re-read for
that, so corruption is found by `prag store verify` (and on load), and `--repair` drops
the corrupted documents so the next build re-encodes them.
"""
import functools
import hashlib
import json
import math
import os
import warnings
from collections import namedtuple
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as numpy_safetensors_bytes
from safetensors.torch import save as safetensors_bytes
from tqdm.auto import tqdm

from .corpus import append_line, write_bytes_atomic, write_text_atomic
from .doc_params import FINGERPRINT_FIELDS, DocParams, DocParamsError
from .store import FORMAT, FORMAT_VERSION, Store, StoreError, read_manifest

LAYOUT = "sharded"
SHARD_FORMAT = "prag.shard"
STORAGE_DTYPES = ("float32", "bfloat16", "float16")
COMPACT_MIN = 65536  # journal entries before flush() compacts (also when they pass 1/8 of the index)
Entry = namedtuple("Entry", "shard slot sha256")  # shard file name, slot in it, sha256 of the document text
_NUMPY = {"U8": np.uint8, "I32": np.int32, "I64": np.int64, "U64": np.uint64}


def open_store(folder, fingerprint, training=None, device="cpu", compute_dtype=None, storage_dtype=None,
               shard_size=None):
    """The store in `folder`, in the layout its manifest names: store.Store (a file per document) or
    ShardedStore.

    A new store (building): shard_size None = a file per document, else shards of shard_size documents;
    storage_dtype None = float32. An existing store keeps its layout and dtype (asking for another one is a
    StoreError); a new shard_size applies to the shards written from now on.
    compute_dtype: the serving model's dtype; documents load in the wider of it and the storage dtype
    (16-bit pairs are upcast for a float32 model, never downcast)."""
    folder = Path(folder)
    manifest = read_manifest(folder / "manifest.json", fingerprint)
    if storage_dtype is not None and storage_dtype not in STORAGE_DTYPES:
        raise StoreError(f"storage dtype: unknown {storage_dtype!r}; choose from {', '.join(STORAGE_DTYPES)}")
    if manifest is None:
        layout, stored_dtype = (LAYOUT if shard_size else "files"), storage_dtype or "float32"
    else:
        layout, stored_dtype = manifest.get("layout", "files"), manifest.get("dtype", "float32")
        if storage_dtype not in (None, stored_dtype):
            raise StoreError(f"{folder}: stores pairs in {stored_dtype}; storing {storage_dtype} needs another "
                             f"work directory")
        if shard_size and layout != LAYOUT:
            raise StoreError(f"{folder}: uses one file per document; a sharded store needs another work directory")
        shard_size = shard_size or manifest.get("shard_size")
    load_dtype = torch.promote_types(getattr(torch, stored_dtype), compute_dtype) if compute_dtype else None
    if layout == LAYOUT:
        return ShardedStore(folder, fingerprint, training, device, load_dtype, stored_dtype, shard_size)
    if layout != "files":
        raise StoreError(f"{folder / 'manifest.json'}: unknown layout {layout!r}")
    return Store(folder, fingerprint, training, device, load_dtype, stored_dtype)


def _key(doc_id):
    """The index's sort key of a document id: the first 8 bytes of its sha256, as an unsigned integer."""
    return int.from_bytes(hashlib.sha256(doc_id.encode("utf-8")).digest()[:8], "little")


def _tag(training):
    """A short digest of a training config: shards trained alike share it."""
    return hashlib.sha256(json.dumps(training, sort_keys=True).encode()).hexdigest()[:16]


def _seq(shard_name):
    return int(shard_name.split(".", 1)[0])


def _digest(flat):
    return hashlib.sha256(flat.contiguous().view(torch.uint8).numpy()).hexdigest()


def _memmap(path):
    """(metadata, name -> read-only numpy array mapped from the file) of a safetensors file."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    metadata = header.pop("__metadata__", None) or {}
    arrays = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        dtype, shape = _NUMPY[info["dtype"]], tuple(info["shape"])
        arrays[name] = (np.memmap(path, dtype=dtype, mode="r", offset=8 + size + begin, shape=shape)
                        if end > begin else np.zeros(shape, dtype))
    return metadata, arrays


def write_index(path, entries, tags, next_shard):
    """Write an index atomically. entries: {doc id: Entry}; tags: shard name -> tag of its training config."""
    n, values = len(entries), list(entries.values())
    keys = np.fromiter(map(_key, entries), np.uint64, n)
    order = np.argsort(keys, kind="stable")
    ids = [doc_id.encode("utf-8") for doc_id in entries]
    ids = [ids[row] for row in order.tolist()]
    shards = sorted({entry.shard for entry in values})
    number = {name: i for i, name in enumerate(shards)}
    columns = {
        "key": keys[order],
        "shard": np.fromiter((number[e.shard] for e in values), np.int32, n)[order],
        "slot": np.fromiter((e.slot for e in values), np.int32, n)[order],
        "sha256": np.frombuffer(bytes.fromhex("".join(e.sha256 for e in values)), np.uint8).reshape(n, 32)[order],
        "id_end": np.cumsum(np.fromiter(map(len, ids), np.int64, n)),
        "ids": np.frombuffer(b"".join(ids), np.uint8),
    }
    metadata = {"format": "prag.store_index", "shards": json.dumps([[s, tags[s]] for s in shards]),
                "next_shard": str(next_shard)}
    write_bytes_atomic(path, numpy_safetensors_bytes(columns, metadata=metadata))


class _Index:
    """id -> Entry: the memory-mapped index overlaid with the journal (see the module docstring)."""

    def __init__(self, folder, writable):
        self.folder, self.writable = Path(folder), writable
        self.path, self.journal = self.folder / "index.safetensors", self.folder / "journal.jsonl"
        try:
            metadata, cols = _memmap(self.path) if self.path.is_file() else ({}, {})
            self.key = cols.get("key", np.zeros(0, np.uint64))
            self.shard, self.slot = cols.get("shard", np.zeros(0, np.int32)), cols.get("slot", np.zeros(0, np.int32))
            self.sha = cols.get("sha256", np.zeros((0, 32), np.uint8))
            self.id_end, self.ids = cols.get("id_end", np.zeros(0, np.int64)), cols.get("ids", np.zeros(0, np.uint8))
            shards = json.loads(metadata.get("shards", "[]"))
            self.shards, self.tags = [name for name, _ in shards], dict(shards)
            self.next_shard = int(metadata.get("next_shard", 0))
            if not (len(self.key) == len(self.shard) == len(self.slot) == len(self.sha) == len(self.id_end)):
                raise ValueError("columns of different lengths")
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise StoreError(f"{self.path}: unreadable index ({type(err).__name__}: {err}); "
                             f"`prag store verify` tells more") from None
        self.recent, self.journal_entries, self.size = {}, 0, len(self.key)
        self._replay()

    def _replay(self):
        if not self.journal.is_file():
            return
        *lines, torn = self.journal.read_bytes().split(b"\n")
        for lineno, line in enumerate(lines, 1):
            try:
                self._apply(json.loads(line))
            except (ValueError, KeyError, TypeError) as err:
                raise StoreError(f"{self.journal}:{lineno}: unreadable journal line ({err})") from None
        if torn and self.writable:  # a crash mid-append: drop the torn line before appending after it
            write_bytes_atomic(self.journal, b"".join(line + b"\n" for line in lines))

    def _apply(self, record):
        if "drop" in record:
            changes = [(doc_id, None) for doc_id in record["drop"]]
        else:
            name = record["shard"]
            self.tags[name], self.next_shard = record["tag"], max(self.next_shard, _seq(name) + 1)
            changes = [(doc_id, Entry(name, slot, sha)) for slot, (doc_id, sha)
                       in enumerate(zip(record["ids"], record["sha256"], strict=True))]
        for doc_id, entry in changes:
            self.size += (entry is not None) - (self.get(doc_id) is not None)
            self.recent[doc_id] = entry
        self.journal_entries += len(changes)

    def append(self, record):
        """Apply a journal record and make it durable."""
        append_line(self.journal, json.dumps(record, ensure_ascii=False) + "\n")
        self._apply(record)

    def _row(self, doc_id):
        key, raw = np.uint64(_key(doc_id)), doc_id.encode("utf-8")
        lo, hi = np.searchsorted(self.key, key, "left"), np.searchsorted(self.key, key, "right")
        for row in range(lo, hi):  # several rows only on a 64-bit key collision
            if self.ids[(self.id_end[row - 1] if row else 0):self.id_end[row]].tobytes() == raw:
                return row
        return None

    def get(self, doc_id):
        if doc_id in self.recent:
            return self.recent[doc_id]
        row = self._row(doc_id)
        if row is None:
            return None
        return Entry(self.shards[self.shard[row]], int(self.slot[row]), self.sha[row].tobytes().hex())

    def indexed_ids(self):
        """The ids of the index file's rows, in row order (journal not applied)."""
        data, start = self.ids.tobytes(), 0
        for end in self.id_end.tolist():
            yield data[start:end].decode("utf-8")
            start = end

    def __iter__(self):
        yield from (doc_id for doc_id in self.indexed_ids() if doc_id not in self.recent)
        yield from (doc_id for doc_id, entry in self.recent.items() if entry is not None)

    def __len__(self):
        return self.size

    def compact(self):
        """Write the index with the journal applied, empty the journal; returns the shard names in use."""
        shas = self.sha.tobytes().hex()
        entries = {doc_id: Entry(self.shards[shard], slot, shas[64 * row:64 * row + 64]) for row, (doc_id, shard, slot)
                   in enumerate(zip(self.indexed_ids(), self.shard.tolist(), self.slot.tolist()))}
        for doc_id, entry in self.recent.items():
            if entry is None:
                entries.pop(doc_id, None)
            else:
                entries[doc_id] = entry
        write_index(self.path, entries, self.tags, self.next_shard)
        write_bytes_atomic(self.journal, b"")
        self.__init__(self.folder, self.writable)
        return set(self.shards)


class _Shard:
    """An open shard: its safe_open handle (memory-mapped) and decoded header."""

    def __init__(self, path):
        self.path = path
        try:
            self.handle = safe_open(str(path), framework="pt")
            metadata = self.handle.metadata() or {}
        except (SafetensorError, OSError, ValueError) as err:
            raise DocParamsError(f"{path}: not a readable safetensors shard ({err})") from None
        if metadata.get("format") != SHARD_FORMAT:
            raise DocParamsError(f"{path}: metadata field 'format' is {metadata.get('format')!r}, "
                                 f"expected {SHARD_FORMAT!r}")
        try:
            self.common, self.layouts, self.documents = (json.loads(metadata[k])
                                                         for k in ("common", "layouts", "documents"))
        except (KeyError, json.JSONDecodeError) as err:
            raise DocParamsError(f"{path}: metadata fields 'common'/'layouts'/'documents' unreadable "
                                 f"({type(err).__name__}: {err})") from None
        for slot, record in enumerate(self.documents if isinstance(self.documents, list) else [None]):
            if not (isinstance(self.common, dict) and isinstance(self.layouts, list) and isinstance(record, dict)
                    and isinstance(record.get("metadata"), dict) and isinstance(record.get("sha256"), str)
                    and record.get("layout") in range(len(self.layouts))):
                raise DocParamsError(f"{path}: metadata field 'documents' is malformed at slot {slot}")

    def metadata(self, slot):
        """The §4.3 metadata (str -> JSON str) of the document in `slot`."""
        return {**self.common, **self.documents[slot]["metadata"]}

    def field(self, slot, name):
        """A metadata field of the document in `slot`, decoded (the raw string if it is not JSON)."""
        value = self.metadata(slot).get(name)
        try:
            return None if value is None else json.loads(value)
        except json.JSONDecodeError:
            return value

    def read(self, slot, fingerprint=None, device="cpu", dtype=None):
        """The DocParams in `slot`: its bytes checked against their sha256, then as DocParams.load checks."""
        where = f"{self.path} [slot {slot}, document {self.field(slot, 'doc_id')!r}]"
        try:
            flat = self.handle.get_tensor(str(slot))
        except (SafetensorError, OSError, ValueError) as err:
            raise DocParamsError(f"{where}: unreadable tensor ({err})") from None
        record = self.documents[slot]
        if _digest(flat) != record["sha256"]:
            raise DocParamsError(f"{where}: sha256 of the document's bytes does not match: corrupted")
        tensors, offset = {}, 0
        for name, shape in self.layouts[record["layout"]]:
            size = math.prod(shape)
            tensors[name] = flat[offset:offset + size].view(shape)
            offset += size
        if offset != flat.numel():
            raise DocParamsError(f"{where}: holds {flat.numel()} values, its layout {offset}")
        return DocParams.decode(where, self.metadata(slot), tensors, fingerprint, device, dtype)


def shard_bytes(docs_params, where):
    """The safetensors bytes of a shard holding `docs_params` (DocParams, in slot order)."""
    encoded = [params.encode(where) for params in docs_params]
    common = {k: v for k, v in encoded[0][0].items() if all(m.get(k) == v for m, _ in encoded)}
    layouts, documents, tensors = [], [], {}
    for slot, (metadata, named) in enumerate(encoded):
        layout = [[name, list(named[name].shape)] for name in sorted(named)]
        if layout not in layouts:
            layouts.append(layout)
        tensors[str(slot)] = torch.cat([named[name].reshape(-1) for name, _ in layout])
        documents.append({"metadata": {k: v for k, v in metadata.items() if k not in common},
                          "layout": layouts.index(layout), "sha256": _digest(tensors[str(slot)])})
    header = {"format": SHARD_FORMAT, "format_version": "1", "common": json.dumps(common),
              "layouts": json.dumps(layouts), "documents": json.dumps(documents)}
    return safetensors_bytes(tensors, metadata=header)


class ShardedStore(Mapping):
    """The sharded store in `folder` for the model with `fingerprint` (same interface as store.Store).

    training: the TrainConfig dict of documents that count as done (building; the store is then written);
    None = only reading. device / dtype: where loaded documents go. storage_dtype: the pairs' dtype on
    disk. shard_size: documents per shard."""

    def __init__(self, folder, fingerprint, training=None, device="cpu", dtype=None, storage_dtype="float32",
                 shard_size=256):
        self.folder, self.shard_dir = Path(folder), Path(folder) / "shards"
        self.fingerprint, self.training, self.device, self.dtype = fingerprint, training, device, dtype
        self.storage_dtype, self.shard_size = storage_dtype, shard_size
        self.manifest_path = self.folder / "manifest.json"
        read_manifest(self.manifest_path, fingerprint)
        self.index = _Index(self.folder, writable=training is not None)
        self._buffer = []  # (doc, DocParams) put but not yet in a shard
        self._present = None  # shard file names on disk (listed once, for done())
        self._shard = functools.lru_cache(maxsize=64)(lambda name: _Shard(self.shard_dir / name))
        self._load = functools.lru_cache(maxsize=256)(self._read)
        if training is not None:
            self._adopt_orphans()
            manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "layout": LAYOUT,
                        "dtype": storage_dtype, "shard_size": shard_size, "fingerprint": fingerprint,
                        "training": training}
            write_text_atomic(self.manifest_path, json.dumps(manifest, indent=1, sort_keys=True) + "\n")

    def _adopt_orphans(self):
        """Journal the shards a crashed build wrote but did not journal (numbers from next_shard on)."""
        if not self.shard_dir.is_dir():
            return
        for path in sorted(self.shard_dir.glob("[0-9]*.safetensors")):
            if _seq(path.name) < self.index.next_shard:
                continue
            try:
                shard = _Shard(path)
                slots = range(len(shard.documents))
                record = {"shard": path.name, "tag": _tag(shard.field(0, "training")),
                          "ids": [shard.field(s, "doc_id") for s in slots],
                          "sha256": [shard.field(s, "doc_sha256") for s in slots]}
            except (DocParamsError, IndexError) as err:
                warnings.warn(f"{err}; an unrecorded shard, ignored (its documents are encoded again)", stacklevel=3)
                self.index.next_shard = _seq(path.name) + 1
                continue
            self.index.append(record)

    def done(self, doc):
        """Whether `doc` (id, sha256) is in the store, trained from its text with this training config."""
        entry = self.index.get(doc.id)
        if entry is None or entry.sha256 != doc.sha256:
            return False
        if self._present is None:
            self._present = set(os.listdir(self.shard_dir)) if self.shard_dir.is_dir() else set()
        if entry.shard not in self._present:
            warnings.warn(f"{self.shard_dir / entry.shard}: missing; re-encoding document {doc.id!r}", stacklevel=2)
            return False
        return self.training is None or self.index.tags.get(entry.shard) == _tag(self.training)

    def put(self, doc, params):
        """Buffer a document's trained parameters (in storage_dtype); flush() writes full shards."""
        params = params.to(dtype=getattr(torch, self.storage_dtype))
        params.meta.update(doc_id=doc.id, doc_sha256=doc.sha256)
        self._buffer.append((doc, params))

    def flush(self):
        """Write every full shard of buffered documents; compact the journal when it has grown long."""
        while len(self._buffer) >= self.shard_size:
            self._write_shard(self._buffer[:self.shard_size])
            del self._buffer[:self.shard_size]
        if self.index.journal_entries > max(COMPACT_MIN, len(self.index.key) // 8):
            self._compact()

    def close(self):
        """The end of a build: write the last, partial shard, compact, delete unused shard files."""
        if self._buffer:
            self._write_shard(self._buffer)
            self._buffer.clear()
        self._compact()

    def _write_shard(self, batch):
        name = f"{self.index.next_shard:010d}.safetensors"
        path = self.shard_dir / name
        write_bytes_atomic(path, shard_bytes([params for _, params in batch], path))
        self.index.append({"shard": name, "tag": _tag(self.training), "ids": [doc.id for doc, _ in batch],
                           "sha256": [doc.sha256 for doc, _ in batch]})

    def _compact(self):
        in_use = self.index.compact()
        for path in self.shard_dir.glob("*") if self.shard_dir.is_dir() else ():
            if path.name not in in_use:  # superseded shards and temp files of a killed write
                path.unlink(missing_ok=True)
        self._present = None

    def retain(self, doc_ids):
        """Drop every document not in `doc_ids`: they left the corpus (their bytes go at compaction)."""
        keep = set(doc_ids)
        gone = [doc_id for doc_id in self.index if doc_id not in keep]
        if gone:
            self.index.append({"drop": gone})

    def size_bytes(self):
        files = [self.manifest_path, self.index.path, self.index.journal]
        files += list(self.shard_dir.iterdir()) if self.shard_dir.is_dir() else []
        return sum(p.stat().st_size for p in files if p.is_file())

    def _read(self, shard, slot):
        return self._shard(shard).read(slot, self.fingerprint, self.device, self.dtype)

    def __getitem__(self, doc_id):
        entry = self.index.get(doc_id)
        if entry is None:
            raise KeyError(doc_id)
        return self._load(entry.shard, entry.slot)

    def __contains__(self, doc_id):
        return self.index.get(doc_id) is not None

    def __iter__(self):
        return iter(self.index)

    def __len__(self):
        return len(self.index)


def verify(folder, progress=True):
    """(problems, ids): every problem of the store in `folder`, one line each naming the file, document and
    what is wrong (none: sound), and the ids of the documents concerned. Reads every byte; stops at nothing."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        fingerprint = manifest["fingerprint"]
        missing = [k for k in FINGERPRINT_FIELDS if k not in fingerprint]
        if missing:
            raise KeyError(f"fingerprint.{missing[0]}")
    except (OSError, ValueError, KeyError, TypeError) as err:
        return [f"{folder / 'manifest.json'}: unreadable manifest ({type(err).__name__}: {err})"], set()
    if manifest.get("layout", "files") == LAYOUT:
        return _verify_sharded(folder, fingerprint, progress)
    problems, bad = [], set()
    for doc_id, entry in tqdm(manifest.get("documents", {}).items(), desc="verify", unit="doc",
                              disable=not progress):
        try:
            meta = DocParams.load(folder / entry["file"], fingerprint=fingerprint).meta
            if (meta.get("doc_id"), meta.get("doc_sha256")) != (doc_id, entry["sha256"]):
                raise DocParamsError(f"{folder / entry['file']}: holds document {meta.get('doc_id')!r} "
                                     f"(text sha256 {meta.get('doc_sha256')}), the manifest says {doc_id!r} "
                                     f"({entry['sha256']})")
        except (DocParamsError, KeyError, TypeError) as err:
            problems.append(f"document {doc_id!r}: {err}")
            bad.add(doc_id)
    return problems, bad


def _verify_sharded(folder, fingerprint, progress):
    problems, bad = [], set()
    try:
        index = _Index(folder, writable=False)
    except StoreError as err:
        return [str(err)], set()
    keys = index.key.tolist()
    for row, doc_id in enumerate(index.indexed_ids()):
        if _key(doc_id) != keys[row] or (row and keys[row] < keys[row - 1]):
            problems.append(f"{index.path}: row {row} (document {doc_id!r}) is out of place: key mismatch")
            bad.add(doc_id)
    by_shard = {}
    for doc_id in index:
        entry = index.get(doc_id)
        by_shard.setdefault(entry.shard, {})[entry.slot] = (doc_id, entry.sha256)
    # Only what the index points at: slots no entry uses any more are garbage, gone at the next compaction.
    for name, wanted in tqdm(sorted(by_shard.items()), desc="verify", unit="shard", disable=not progress):
        path = folder / "shards" / name
        shard, problem = None, f"{path}: missing"
        if path.is_file():
            try:
                shard = _Shard(path)
            except DocParamsError as err:
                problem = str(err)
        if shard is None:
            ids = sorted(doc_id for doc_id, _ in wanted.values())
            problems.append(f"{problem} (documents {', '.join(map(repr, ids))})")
            bad.update(ids)
            continue
        for slot, (doc_id, sha) in sorted(wanted.items()):
            try:
                if slot >= len(shard.documents):
                    raise DocParamsError(f"{path}: has no slot {slot}, where the index puts document {doc_id!r}")
                meta = shard.read(slot, fingerprint).meta
                if (meta.get("doc_id"), meta.get("doc_sha256")) != (doc_id, sha):
                    raise DocParamsError(f"{path} [slot {slot}]: holds document {meta.get('doc_id')!r}, the index "
                                         f"says {doc_id!r} (text sha256 {sha})")
            except DocParamsError as err:
                problems.append(str(err))
                bad.add(doc_id)
    return problems, bad


def run_verify(workdir, repair=False, progress=True):
    """`prag store verify`: print every problem, then a summary; with `repair`, drop the documents concerned
    from a sharded store's index so the next `prag build` encodes them again. Returns the exit status
    (1: problems found)."""
    folder = Path(workdir) / "store"
    if not (folder / "manifest.json").is_file():
        raise StoreError(f"{folder}: no parameter store here (no manifest.json); run `prag build` first")
    problems, bad = verify(folder, progress)
    for line in problems:
        print(line)
    print(f"{folder}: {len(problems)} problem(s), {len(bad)} document(s) affected")
    if repair and bad:
        if (folder / "index.safetensors").is_file() or (folder / "journal.jsonl").is_file():
            _Index(folder, writable=True).append({"drop": sorted(bad)})
            print(f"dropped {len(bad)} document(s) from the index; `prag build` encodes them again")
        else:
            print("a store of one file per document: `prag build` re-encodes corrupted documents by itself")
    return 1 if problems else 0

"""The parameter store: documents' pairs as safetensors payloads, listed in a SQLite catalog (DESIGN §4.3).

    <folder>/catalog.sqlite    the catalog, in WAL mode:
        meta        key -> JSON: fingerprint (model_fingerprint), dtype (of the stored pairs), shard_size
                    (documents per shard; null = a file per document), next_shard (sequence number)
        documents   id, sha256 (of the text), tag (training_tag of its training config), file (its payload,
                    relative to the folder), slot (in a shard; null = the whole file), bytes_sha256 (of the
                    payload's bytes: the whole file, or the slot's tensor)
        payloads    file, bytes: a row per payload file, a shard or a document's file
    <folder>/<slug>-<id hash>.<bytes hash>.safetensors   a document's file (DocParams' §4.3 format)
    <folder>/shards/<seq>.safetensors                    up to shard_size documents (shard_bytes)

Writing (one writer: the build). A payload is written whole (temp file, fsync, rename) before the
transaction that lists it commits, so no row points at missing bytes, and a killed build loses only
the documents not yet committed: put() commits a document file at once; a sharded store buffers,
flush() writes every full shard and close() the last, partial one. Payloads are never rewritten (their
names hold a hash or a sequence number): close() deletes the ones no row uses any more and what a
killed build left. A shard written but not committed (sequence from next_shard on) is adopted by the
next build.

Reading. Readers in any thread or process see every commit without reopening: a lookup is one
indexed SELECT. A payload is read lazily (a shard through safetensors' memory-mapped safe_open, one
slot), its bytes checked against bytes_sha256, then every field and tensor as DocParams.load checks;
a reader whose payload was replaced or dropped since its lookup looks up again.

done(doc): the catalog has doc.id with the same text sha256 and the training tag of the config the
store was opened with (any tag when opened without one). A document file's bytes are re-hashed for
that (corrupted or missing: a warning, and it is encoded again); a shard's bytes are checked by `prag
store verify` and on load, done() only sees that the shard is there. tags() counts the documents per
training tag in one query ({tag: n}; `store.tag` is the opening config's, training_tag(config) any
config's): more than one tag is a store mixed from two training configs.

Older stores (manifest.json: a file per document, or shards with index.safetensors + journal.jsonl)
are converted on opening: a new catalog is committed under a temporary name and renamed into place,
and only then are the old files deleted. A lost or unreadable catalog is a StoreError; `prag store
verify --repair` lists every payload file in a new one.
"""
import functools
import hashlib
import json
import math
import os
import re
import sqlite3
import sys
import threading
import warnings
from collections import namedtuple
from collections.abc import Mapping
from itertools import groupby
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors_bytes, save as safetensors_bytes
from tqdm.auto import tqdm

from .corpus import write_bytes_atomic
from .doc_params import FINGERPRINT_FIELDS, DocParams, DocParamsError

CATALOG = "catalog.sqlite"
SHARD_FORMAT = "prag.shard"
STORAGE_DTYPES = ("float32", "bfloat16", "float16")
SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE documents (id TEXT PRIMARY KEY, sha256 TEXT NOT NULL, tag TEXT NOT NULL, file TEXT NOT NULL,
                        slot INTEGER, bytes_sha256 TEXT NOT NULL);
CREATE INDEX documents_file ON documents (file);
CREATE INDEX documents_tag ON documents (tag);
CREATE TABLE payloads (file TEXT PRIMARY KEY, bytes INTEGER NOT NULL);
"""
Row = namedtuple("Row", "id sha256 tag file slot bytes_sha256")
COLUMNS = ", ".join(Row._fields)


class StoreError(ValueError):
    """A store that cannot be used as asked (another model's, dtype or layout; an unreadable catalog); one line."""


def training_tag(training):
    """A short digest of a training config: documents trained alike share it."""
    return hashlib.sha256(json.dumps(training, sort_keys=True).encode()).hexdigest()[:16]


def file_name(doc_id, digest):
    """A document file's name: a readable slug of its id, a hash of the id, the start of its bytes' sha256."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", doc_id)[:48].strip("._") or "doc"
    return f"{slug}-{hashlib.sha256(doc_id.encode('utf-8')).hexdigest()[:12]}.{digest[:12]}.safetensors"


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def _digest(flat):
    return _sha256(flat.contiguous().view(torch.uint8).numpy())


def _seq(path):
    return int(Path(path).name.split(".", 1)[0])


def _check_fingerprint(folder, stored, fingerprint):
    for key in FINGERPRINT_FIELDS:
        if stored.get(key) != fingerprint.get(key):
            raise StoreError(f"{folder}: built for another model ({stored.get('name_or_path') or '?'}; "
                             f"fingerprint.{key} is {stored.get(key)!r}, this model's is {fingerprint.get(key)!r}); "
                             f"use the same model or another work directory")


class Store(Mapping):
    """The store in `folder`, as a mapping id -> DocParams.

    fingerprint: model_fingerprint of the model it serves (None: the store's own, e.g. to export).
    training: the TrainConfig dict of documents that count as done; needed to write (building).
    device / compute_dtype: where loaded documents go, in the wider of the stored and the model's dtype
    (16-bit pairs are upcast for a float32 model, never downcast).
    A new store (training given, nothing in `folder`): storage_dtype (default float32), shard_size (None:
    a file per document). An existing one keeps its dtype and layout (asking for others is a StoreError);
    a new shard_size applies to the shards written from then on."""

    def __init__(self, folder, fingerprint=None, training=None, device="cpu", compute_dtype=None,
                 storage_dtype=None, shard_size=None):
        self.folder, self.path = Path(folder), Path(folder) / CATALOG
        self.training, self.device = training, device
        self.tag = None if training is None else training_tag(training)
        self._local = threading.local()  # a connection per thread
        if storage_dtype is not None and storage_dtype not in STORAGE_DTYPES:
            raise StoreError(f"storage dtype: unknown {storage_dtype!r}; choose from {', '.join(STORAGE_DTYPES)}")
        if not self.path.is_file():
            self._create(fingerprint, storage_dtype, shard_size)
        meta = self._meta()
        if fingerprint is not None:
            _check_fingerprint(self.folder, meta["fingerprint"], fingerprint)
        if storage_dtype not in (None, meta["dtype"]):
            raise StoreError(f"{self.folder}: stores pairs in {meta['dtype']}; storing {storage_dtype} needs another "
                             f"work directory")
        if shard_size and not meta["shard_size"]:
            raise StoreError(f"{self.folder}: uses one file per document; a sharded store needs another work directory")
        self.fingerprint, self.storage_dtype = meta["fingerprint"], meta["dtype"]
        self.shard_size = shard_size or meta["shard_size"]
        self.dtype = torch.promote_types(getattr(torch, self.storage_dtype), compute_dtype) if compute_dtype else None
        self._buffer = []  # (doc, DocParams) put, not yet in a shard
        self._present = None  # shard files on disk, listed once for done()
        self._shard = functools.lru_cache(maxsize=64)(lambda file: _Shard(self.folder / file))
        self._load = functools.lru_cache(maxsize=256)(self._read)
        if training is not None:
            _remove_legacy(self.folder)  # left by a conversion killed after its rename
            if self.shard_size:
                self._set("shard_size", self.shard_size)
                self._adopt()

    def _create(self, fingerprint, storage_dtype, shard_size):
        """A new catalog: converted from an older store's files, or empty; else a StoreError."""
        if (self.folder / "manifest.json").is_file():
            return _convert(self.folder, fingerprint)
        if _payload_files(self.folder):
            raise StoreError(f"{self.path}: missing, but payload files are there; `prag store verify --repair` "
                             f"lists them in a new catalog")
        if self.training is None or fingerprint is None:
            raise StoreError(f"{self.folder}: no parameter store here (no {CATALOG}); run `prag build` first")
        _write_catalog(self.path, {"fingerprint": fingerprint, "dtype": storage_dtype or "float32",
                                   "shard_size": shard_size, "next_shard": 0}, [], {})

    def _db(self):
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = sqlite3.connect(self.path, timeout=60)
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: a commit survives a killed process without an fsync
        return db

    def _query(self, sql, args=()):
        """The rows of a read-only statement; a damaged catalog is a StoreError."""
        try:
            return self._db().execute(sql, args).fetchall()
        except sqlite3.DatabaseError as err:
            raise self._unreadable(err) from None

    def _unreadable(self, why):
        return StoreError(f"{self.path}: unreadable catalog ({why}); `prag store verify --repair` rebuilds it "
                          f"from the payload files")

    def _meta(self):
        rows = self._query("SELECT key, value FROM meta")
        try:
            meta = {key: json.loads(value) for key, value in rows}
        except ValueError as err:
            raise self._unreadable(err) from None
        missing = {"fingerprint", "dtype", "shard_size", "next_shard"} - set(meta)
        if missing:
            raise self._unreadable(f"meta lacks {', '.join(sorted(missing))}")
        return meta

    def _set(self, key, value):
        with self._db() as db:
            db.execute("UPDATE meta SET value = ? WHERE key = ?", (json.dumps(value), key))

    def _row(self, doc_id):
        rows = self._query(f"SELECT {COLUMNS} FROM documents WHERE id = ?", (doc_id,))
        return Row(*rows[0]) if rows else None

    def rows(self):
        """Every document's catalog Row, by payload file and slot."""
        return [Row(*r) for r in self._query(f"SELECT {COLUMNS} FROM documents ORDER BY file, slot")]

    def tags(self):
        """{training tag: number of documents} (one query); compare with `self.tag`."""
        return dict(self._query("SELECT tag, count(*) FROM documents GROUP BY tag"))

    def done(self, doc):
        """Whether `doc` (id, sha256) is stored, trained from its text with this store's training config."""
        row = self._row(doc.id)
        if row is None or row.sha256 != doc.sha256 or self.tag not in (None, row.tag):
            return False
        path = self.folder / row.file
        if row.slot is None:
            try:
                problem = None if _sha256(path.read_bytes()) == row.bytes_sha256 else "bytes do not match: corrupted"
            except OSError:
                problem = "missing"
        else:
            if self._present is None:
                shards = self.folder / "shards"
                self._present = {f"shards/{n}" for n in os.listdir(shards)} if shards.is_dir() else set()
            problem = None if row.file in self._present else "missing"
        if problem:
            warnings.warn(f"{path}: {problem}; re-encoding document {doc.id!r}", stacklevel=2)
        return problem is None

    def put(self, doc, params):
        """Store a document's trained pairs (in storage_dtype): a document file is written and committed now,
        a sharded store's documents at flush() or close()."""
        params = params.to(dtype=getattr(torch, self.storage_dtype))
        params.meta.update(doc_id=doc.id, doc_sha256=doc.sha256)
        if self.shard_size:
            self._buffer.append((doc, params))
            return
        data = params.to_bytes(f"{self.folder}: document {doc.id!r}")
        digest = _sha256(data)
        name = file_name(doc.id, digest)
        write_bytes_atomic(self.folder / name, data)
        self._commit(name, len(data), [(doc.id, doc.sha256, self.tag, name, None, digest)])

    def flush(self):
        """Write and commit every full shard of buffered documents."""
        while self.shard_size and len(self._buffer) >= self.shard_size:
            self._write_shard(self._buffer[:self.shard_size])
            del self._buffer[:self.shard_size]

    def close(self):
        """The end of a build: write the last, partial shard; delete the payloads no document uses."""
        if self._buffer:
            self._write_shard(self._buffer)
            self._buffer.clear()
        used = {file for (file,) in self._query("SELECT DISTINCT file FROM documents")}
        with self._db() as db:
            db.execute("DELETE FROM payloads WHERE file NOT IN (SELECT file FROM documents)")
        for path in _payload_files(self.folder, temporary=True):
            if path.relative_to(self.folder).as_posix() not in used:
                path.unlink(missing_ok=True)
        self._present = None

    def _write_shard(self, batch):
        seq = self._meta()["next_shard"]
        name = f"shards/{seq:010d}.safetensors"
        data, digests = shard_bytes([params for _, params in batch], self.folder / name)
        write_bytes_atomic(self.folder / name, data)
        self._commit(name, len(data), [(doc.id, doc.sha256, self.tag, name, slot, digest)
                                       for slot, ((doc, _), digest) in enumerate(zip(batch, digests))], seq + 1)

    def _commit(self, file, size, rows, next_shard=None):
        """One transaction: the payload `file` and its documents' rows (replacing theirs), and next_shard."""
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO payloads VALUES (?, ?)", (file, size))
            db.executemany("INSERT OR REPLACE INTO documents VALUES (?, ?, ?, ?, ?, ?)", rows)
            if next_shard is not None:
                db.execute("UPDATE meta SET value = ? WHERE key = 'next_shard'", (json.dumps(next_shard),))
        if self._present is not None:
            self._present.add(file)

    def _adopt(self):
        """Commit the shards a killed build wrote but did not commit (sequence numbers from next_shard on)."""
        shards = self.folder / "shards"
        for path in sorted(shards.glob("[0-9]*.safetensors")) if shards.is_dir() else ():
            if _seq(path) >= self._meta()["next_shard"]:
                try:
                    rows = _shard_rows(self.folder, _Shard(path))
                except DocParamsError as err:
                    warnings.warn(f"{err}; an unlisted shard, ignored (its documents are encoded again)", stacklevel=3)
                    rows = []
                self._commit(path.relative_to(self.folder).as_posix(), path.stat().st_size, rows, _seq(path) + 1)

    def retain(self, doc_ids):
        """Drop every document not in `doc_ids` (they left the corpus); close() deletes their bytes."""
        with self._db() as db:
            db.execute("CREATE TEMP TABLE IF NOT EXISTS keep (id TEXT PRIMARY KEY)")
            db.execute("DELETE FROM keep")
            db.executemany("INSERT OR IGNORE INTO keep VALUES (?)", ((doc_id,) for doc_id in doc_ids))
            db.execute("DELETE FROM documents WHERE id NOT IN (SELECT id FROM keep)")

    def size_bytes(self):
        [(payloads,)] = self._query("SELECT coalesce(sum(bytes), 0) FROM payloads")
        return payloads + sum(p.stat().st_size for p in self.folder.glob(CATALOG + "*"))

    def _read(self, file, slot, digest):
        if slot is not None:
            return self._shard(file).read(slot, self.fingerprint, self.device, self.dtype, digest)
        return _read_file(self.folder / file, self.fingerprint, self.device, self.dtype, digest)[0]

    def __getitem__(self, doc_id):
        row = self._row(doc_id)
        while True:
            if row is None:
                raise KeyError(doc_id)
            try:
                return self._load(row.file, row.slot, row.bytes_sha256)
            except DocParamsError:
                again = self._row(doc_id)  # a writer may have replaced or dropped it since the lookup
                if again == row:
                    raise
                row = again

    def __contains__(self, doc_id):
        return self._row(doc_id) is not None

    def __iter__(self):
        return iter([doc_id for (doc_id,) in self._query("SELECT id FROM documents ORDER BY id")])

    def __len__(self):
        return self._query("SELECT count(*) FROM documents")[0][0]


def _read_file(path, fingerprint=None, device="cpu", dtype=None, digest=None):
    """(DocParams, bytes) of a document file, its bytes checked against `digest` when given."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DocParamsError(f"{path}: unreadable ({err.strerror})") from None
    if digest is not None and _sha256(data) != digest:
        raise DocParamsError(f"{path}: sha256 of its bytes does not match the catalog: corrupted")
    try:
        header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
        metadata, tensors = header.get("__metadata__") or {}, load_safetensors_bytes(data)
    except (ValueError, AttributeError, SafetensorError) as err:
        raise DocParamsError(f"{path}: not a readable safetensors file ({err})") from None
    return DocParams.decode(path, metadata, tensors, fingerprint, device, dtype), data


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
            tensors[name] = flat[offset:offset + size].view(shape)
            offset += size
        if offset != flat.numel():
            raise DocParamsError(f"{where}: holds {flat.numel()} values, its layout {offset}")
        metadata = {**self.common, **record["metadata"]}
        return DocParams.decode(where, metadata, tensors, fingerprint, device, dtype)


def shard_bytes(docs_params, where):
    """(the safetensors bytes of a shard holding `docs_params` (DocParams, in slot order), each slot's sha256).

    Tensor "<slot>": the document's §4.3 tensors, flattened and concatenated in the order of its layout.
    Header metadata (JSON values): format "prag.shard"; common (the §4.3 metadata fields all its documents
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
        documents.append({"metadata": {k: v for k, v in metadata.items() if k not in common},
                          "layout": layouts.index(layout), "sha256": _digest(tensors[str(slot)])})
    header = {"format": SHARD_FORMAT, "format_version": "1", "common": json.dumps(common),
              "layouts": json.dumps(layouts), "documents": json.dumps(documents)}
    return safetensors_bytes(tensors, metadata=header), [d["sha256"] for d in documents]


def _payload_files(folder, temporary=False):
    """The payload files in `folder` (with `temporary`, also the temp files of killed writes)."""
    shards = folder / "shards"
    files = [*folder.glob("*-*.safetensors"), *(shards.glob("*.safetensors") if shards.is_dir() else ())]
    if temporary:
        files += [*folder.glob(".*.safetensors.*.tmp"), *(shards.glob(".*.tmp") if shards.is_dir() else ())]
    return sorted(files)


def _shard_rows(folder, shard, slots=None):
    """The catalog rows of a shard's documents (those in `slots`, default all), from its header."""
    file, slots = shard.path.relative_to(folder).as_posix(), range(len(shard.documents)) if slots is None else slots
    try:
        return [(shard.field(s, "doc_id"), shard.field(s, "doc_sha256"), training_tag(shard.field(s, "training")),
                 file, s, shard.documents[s]["sha256"]) for s in slots]
    except IndexError:
        raise DocParamsError(f"{shard.path}: has fewer slots than the index says") from None


def _scan(folder, fingerprint=None):
    """(rows by id, payload file -> bytes, a DocParams read, most documents in a shard) of every readable
    payload in `folder` trained for `fingerprint` (None: the first payload's); a document in several shards
    is taken from the last. The others are left out with a warning (their documents are encoded again)."""
    rows, sizes, first, largest = {}, {}, None, 0
    for path in _payload_files(folder):
        try:
            if path.parent == folder:
                params, data = _read_file(path)
                meta = params.meta
                if "doc_id" not in meta or "doc_sha256" not in meta:
                    raise DocParamsError(f"{path}: metadata fields 'doc_id'/'doc_sha256' are missing")
                found = [(meta["doc_id"], meta["doc_sha256"], training_tag(meta.get("training")), path.name, None,
                          _sha256(data))]
            else:
                shard = _Shard(path)
                found, params = _shard_rows(folder, shard), shard.read(0)
                largest = max(largest, len(found))
            fingerprint = fingerprint or params.meta["fingerprint"]
            _check_fingerprint(path, params.meta["fingerprint"], fingerprint)
        except (DocParamsError, StoreError) as err:
            warnings.warn(f"{err}; left out of the catalog (its documents are encoded again)", stacklevel=3)
            continue
        first = first or params
        rows.update((row[0], row) for row in found)
        sizes[path.relative_to(folder).as_posix()] = path.stat().st_size
    return rows, sizes, first, largest


def rebuild_catalog(folder):
    """List every readable payload file of `folder` in a new catalog (`prag store verify --repair` of a lost
    or unreadable one). Documents dropped since their shard was written come back (the next build drops
    them again). Returns the number of documents listed."""
    rows, sizes, first, largest = _scan(folder)
    if first is None:
        raise StoreError(f"{folder}: no readable payload files to list in a new catalog")
    shards = [_seq(file) for file in sizes if file.startswith("shards/")]
    meta = {"fingerprint": first.meta["fingerprint"], "dtype": str(first.tensors()[0].dtype).removeprefix("torch."),
            "shard_size": largest or None, "next_shard": max(shards, default=-1) + 1}
    _write_catalog(folder / CATALOG, meta, list(rows.values()), sizes)
    _remove_legacy(folder)
    return len(rows)


def _write_catalog(path, meta, rows, sizes):
    """A whole catalog, atomically: written and committed under a temporary name, then renamed over `path`.
    rows: the documents' rows; sizes: payload file -> bytes."""
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    for leftover in (tmp, Path(f"{tmp}-journal")):  # of a killed conversion
        leftover.unlink(missing_ok=True)
    db = sqlite3.connect(tmp)
    with db:
        db.executescript(SCHEMA)
        db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
        db.executemany("INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?)", rows)
        db.executemany("INSERT INTO payloads VALUES (?, ?)", sizes.items())
    db.execute("PRAGMA journal_mode=WAL")  # recorded in the file; no -wal file is left once closed
    db.close()
    for stale in (f"{path}-wal", f"{path}-shm"):  # a replaced catalog's: never to be applied to this one
        Path(stale).unlink(missing_ok=True)
    os.replace(tmp, path)


def _remove_legacy(folder):
    for name in ("manifest.json", "index.safetensors", "journal.jsonl"):
        (folder / name).unlink(missing_ok=True)


def _legacy_index(folder):
    """(id -> (shard name, slot), next shard number) of an older sharded store: its index.safetensors
    overlaid with its journal.jsonl (whose torn last line, if any, is dropped)."""
    index, journal = folder / "index.safetensors", folder / "journal.jsonl"
    live, next_shard, named = {}, 0, set()
    if index.is_file():
        with safe_open(str(index), framework="numpy") as f:
            metadata = f.metadata() or {}
            names = [name for name, _ in json.loads(metadata["shards"])]
            ids, ends, shards, slots = (f.get_tensor(k) for k in ("ids", "id_end", "shard", "slot"))
        ids, start, next_shard, named = ids.tobytes(), 0, int(metadata["next_shard"]), set(names)
        for end, shard, slot in zip(ends.tolist(), shards.tolist(), slots.tolist()):
            live[ids[start:end].decode("utf-8")] = (names[shard], slot)
            start = end
    for line in journal.read_bytes().split(b"\n")[:-1] if journal.is_file() else ():
        record = json.loads(line)
        if "drop" in record:
            for doc_id in record["drop"]:
                live.pop(doc_id, None)
        else:
            live.update((doc_id, (record["shard"], slot)) for slot, doc_id in enumerate(record["ids"]))
            next_shard, named = max(next_shard, _seq(record["shard"]) + 1), named | {record["shard"]}
    if not index.is_file() and any(p.name not in named for p in _payload_files(folder)):
        raise StoreError(f"{index}: missing, so the shards' documents cannot be placed; `prag store verify --repair` "
                         f"lists them in a new catalog")
    return live, next_shard


def _convert(folder, fingerprint):
    """Convert an older store (see the module docstring) into a catalog, then delete its old files."""
    manifest_path = folder / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        stored, sharded = dict(manifest["fingerprint"]), manifest.get("layout", "files") == "sharded"
        live, next_shard = _legacy_index(folder) if sharded else ({}, 0)
    except StoreError:
        raise
    except (OSError, UnicodeDecodeError, KeyError, TypeError, ValueError, SafetensorError) as err:
        raise StoreError(f"{folder}: unreadable older store ({type(err).__name__}: {err})") from None
    if fingerprint is not None:
        _check_fingerprint(folder, stored, fingerprint)
    if sharded:
        rows, sizes = {}, {}
        placed = sorted(live.values(), key=lambda place: (_seq(place[0]), place[1]))
        try:
            for name, group in groupby(placed, key=lambda place: place[0]):
                shard = _Shard(folder / "shards" / name)
                rows.update((row[0], row) for row in _shard_rows(folder, shard, [slot for _, slot in group]))
                sizes[f"shards/{name}"] = shard.path.stat().st_size
        except (DocParamsError, OSError) as err:
            raise StoreError(f"{folder}: cannot convert the older store ({err}); `prag store verify --repair` lists "
                             f"the readable shards in a new catalog") from None
    else:
        rows, sizes, _, _ = _scan(folder, stored)
    meta = {"fingerprint": stored, "dtype": manifest.get("dtype", "float32"),
            "shard_size": manifest.get("shard_size") if sharded else None, "next_shard": next_shard}
    _write_catalog(folder / CATALOG, meta, list(rows.values()), sizes)
    _remove_legacy(folder)
    print(f"prag: {folder}: converted the store to {CATALOG} ({len(rows)} documents)", file=sys.stderr)


def verify(store, progress=True):
    """(problems, ids): every problem of `store`, one line each naming the file, document and what is wrong
    (none: sound), and the ids of the documents concerned. Reads every byte; stops at nothing but a damaged
    catalog (a StoreError)."""
    problems, bad = [], set()
    check = store._query("PRAGMA quick_check")
    if check != [("ok",)]:
        raise store._unreadable(" ".join(message for (message,) in check[:3]).replace("\n", " "))

    def fail(message, rows):
        problems.append(message)
        bad.update(row.id for row in rows)

    for file, rows in tqdm(groupby(store.rows(), key=lambda row: row.file), desc="verify", unit="file",
                           disable=not progress):
        rows, path = list(rows), store.folder / file
        ids = ", ".join(repr(row.id) for row in rows)
        if not path.is_file():
            fail(f"{path}: missing (documents {ids})", rows)
            continue
        if rows[0].slot is not None:
            try:
                store._shard(file)
            except DocParamsError as err:
                fail(f"{err} (documents {ids})", rows)
                continue
        for row in rows:
            try:
                meta = store._read(row.file, row.slot, row.bytes_sha256).meta
                where = f"{path}" + ("" if row.slot is None else f" [slot {row.slot}]")
                if (meta.get("doc_id"), meta.get("doc_sha256")) != (row.id, row.sha256):
                    raise DocParamsError(f"{where}: holds document {meta.get('doc_id')!r}, the catalog says "
                                         f"{row.id!r} (text sha256 {row.sha256})")
            except DocParamsError as err:
                fail(str(err), [row])
    tags = store.tags()
    if len(tags) > 1:
        problems.append(f"{store.path}: documents trained with {len(tags)} training configs "
                        f"({', '.join(f'{n} tagged {tag}' for tag, n in sorted(tags.items()))})")
    return problems, bad


def run_verify(workdir, repair=False, progress=True):
    """`prag store verify`: print every problem, then a summary. With `repair`, drop the documents concerned
    so the next `prag build` encodes them again, and list the payload files in a new catalog where it is
    lost or unreadable. Returns the exit status (1: problems found)."""
    folder = Path(workdir) / "store"
    try:
        store = Store(folder)
        problems, bad = verify(store, progress)
    except StoreError:
        if not (repair and _payload_files(folder)):
            raise
        print(f"{folder}: listed {rebuild_catalog(folder)} document(s) of the payload files in a new {CATALOG}")
        store = Store(folder)
        problems, bad = verify(store, progress)
    for line in problems:
        print(line)
    print(f"{folder}: {len(problems)} problem(s), {len(bad)} document(s) affected")
    if repair and bad:
        store.retain(set(store) - bad)
        print(f"dropped {len(bad)} document(s) from the catalog; `prag build` encodes them again")
    return 1 if problems else 0

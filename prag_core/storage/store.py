"""The parameter store: documents' pairs as safetensors payloads, listed in a SQLite catalog
(docs/design.md, Stores).

    <folder>/catalog.sqlite    the catalog, in WAL mode:
        meta        key -> JSON: fingerprint (model_fingerprint), dtype (of the stored pairs), shard_size
                    (documents per shard; null = a file per document), next_shard (sequence number)
        documents   id, sha256 (of the text), tag (training_tag of its training config), file (its payload,
                    relative to the folder), slot (in a shard; null = the whole file), bytes_sha256 (of the
                    payload's bytes: the whole file, or the slot's tensor)
        payloads    file, bytes: a row per payload file, a shard or a document's file
    <folder>/<slug>-<id hash>.<bytes hash>.safetensors   a document's file (DocParams' file format)
    <folder>/shards/<seq>.safetensors                    up to shard_size documents (payloads.shard_bytes)

Writing (one writer: the build). A payload is written whole (temp file, fsync, rename) before the
transaction that lists it commits, so no row points at missing bytes, and a killed build loses only
the documents not yet committed: put() commits a document file at once; a sharded store buffers,
flush() writes every full shard and close() the last, partial one. Payloads are never rewritten (their
names hold a hash or a sequence number): close() deletes the ones no row uses any more and what a
killed build left. A shard written but not committed (sequence from next_shard on) is adopted by the
next build.

Reading. Readers in any thread or process see every commit without reopening: a lookup is one
indexed SELECT. A payload is read lazily (payloads.py; a shard through safetensors' memory-mapped
safe_open, one slot), its bytes checked against bytes_sha256, then every field and tensor as
DocParams.load checks; a reader whose payload was replaced or dropped since its lookup looks up again.

done(doc): the catalog has doc.id with the same text sha256 and the training tag of the config the
store was opened with (any tag when opened without one). A document file's bytes are re-hashed for
that (corrupted or missing: a warning, and it is encoded again); a shard's bytes are checked by `prag
store verify` and on load, done() only sees that the shard is there. tags() counts the documents per
training tag in one query ({tag: n}; `store.tag` is the opening config's, training_tag(config) any
config's): more than one tag is a store mixed from two training configs.

The store never leaves its folder (folder.py): a symbolic link in it is refused or left alone, never
followed, and a catalog row naming a file elsewhere is a StoreError, not a read (done(): re-encoded).

A lost or unreadable catalog is a StoreError; `prag store verify --repair` (verify.py) lists every
payload file in a new one. A folder a pre-release prag wrote (manifest.json, index.safetensors or
journal.jsonl, and no catalog) is refused with one line saying to rebuild it, and left untouched.
"""

import functools
import json
import os
import sqlite3
import threading
import warnings
from collections import namedtuple
from collections.abc import Mapping
from pathlib import Path

import torch

from prag_core.files import json_digest, write_bytes_atomic
from prag_core.pairs.doc_params import FINGERPRINT_FIELDS, DocParamsError
from prag_core.storage.folder import (
    CATALOG,
    StoreError,
    check_links,
    located,
    outside,
    payload_files,
    refuse_pre_release,
)
from prag_core.storage.payloads import Shard, file_name, file_seq, read_document_file, sha256_hex, shard_bytes

STORAGE_DTYPES = ("float32", "bfloat16", "float16")
_META = {  # the catalog's meta values, each with what it must be (else the catalog is damaged)
    "fingerprint": lambda v: isinstance(v, dict),
    "dtype": lambda v: v in STORAGE_DTYPES,
    "shard_size": lambda v: v is None or (type(v) is int and v > 0),
    "next_shard": lambda v: type(v) is int and v >= 0,
}
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


def training_tag(training):
    """A short digest of a training config: documents trained alike share it."""
    return json_digest(training)


def check_fingerprint(folder, stored, fingerprint):
    for key in FINGERPRINT_FIELDS:
        if stored.get(key) != fingerprint.get(key):
            raise StoreError(
                f"{folder}: built for another model ({stored.get('name_or_path') or '?'}; "
                f"fingerprint.{key} is {stored.get(key)!r}, this model's is {fingerprint.get(key)!r}); "
                f"use the same model or another work directory"
            )


class Store(Mapping):
    """The store in `folder`, as a mapping id -> DocParams.

    fingerprint: model_fingerprint of the model it serves (None: the store's own, e.g. to export).
    training: the TrainConfig dict of documents that count as done; needed to write (building).
    device / compute_dtype: where loaded documents go, in the wider of the stored and the model's dtype
    (16-bit pairs are upcast for a float32 model, never downcast).
    A new store (training given, nothing in `folder`): storage_dtype (default float32), shard_size (None:
    a file per document). An existing one keeps its dtype and layout (asking for others is a StoreError);
    a new shard_size applies to the shards written from then on."""

    def __init__(
        self,
        folder,
        fingerprint=None,
        training=None,
        device="cpu",
        compute_dtype=None,
        storage_dtype=None,
        shard_size=None,
    ):
        self.folder, self.path = Path(folder), Path(folder) / CATALOG
        self.root = os.path.realpath(folder)  # every file read, written or deleted is under it (folder.py)
        check_links(self.folder)
        self.training, self.device = training, device
        self.tag = None if training is None else training_tag(training)
        self._local = threading.local()  # a connection per thread
        if storage_dtype is not None and storage_dtype not in STORAGE_DTYPES:
            raise StoreError(f"storage dtype: unknown {storage_dtype!r}; choose from {', '.join(STORAGE_DTYPES)}")
        if not self.path.is_file():
            self._create(fingerprint, storage_dtype, shard_size)
        meta = self._meta()
        if fingerprint is not None:
            check_fingerprint(self.folder, meta["fingerprint"], fingerprint)
        if storage_dtype not in (None, meta["dtype"]):
            raise StoreError(
                f"{self.folder}: stores pairs in {meta['dtype']}; storing {storage_dtype} needs another work directory"
            )
        if shard_size and not meta["shard_size"]:
            raise StoreError(f"{self.folder}: uses one file per document; a sharded store needs another work directory")
        self.fingerprint, self.storage_dtype = meta["fingerprint"], meta["dtype"]
        self.shard_size = shard_size or meta["shard_size"]
        self.dtype = torch.promote_types(getattr(torch, self.storage_dtype), compute_dtype) if compute_dtype else None
        self._buffer = []  # (doc, DocParams) put, not yet in a shard
        self._present = None  # shard files on disk, listed once for done()
        self._shard = functools.lru_cache(maxsize=64)(lambda file: Shard(located(self.folder, self.root, file)))
        self._load = functools.lru_cache(maxsize=256)(self._read)
        if training is not None and self.shard_size:
            self._set("shard_size", self.shard_size)
            self._adopt()

    def _create(self, fingerprint, storage_dtype, shard_size):
        """A new, empty catalog; else a StoreError."""
        refuse_pre_release(self.folder)
        if payload_files(self.folder):
            raise StoreError(
                f"{self.path}: missing, but payload files are there; `prag store verify --repair` "
                f"lists them in a new catalog"
            )
        if self.training is None or fingerprint is None:
            raise StoreError(f"{self.folder}: no parameter store here (no {CATALOG}); run `prag build` first")
        write_catalog(
            self.path,
            {
                "fingerprint": fingerprint,
                "dtype": storage_dtype or "float32",
                "shard_size": shard_size,
                "next_shard": 0,
            },
            [],
            {},
        )

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
        return StoreError(
            f"{self.path}: unreadable catalog ({why}); `prag store verify --repair` rebuilds it from the payload files"
        )

    def _meta(self):
        rows = self._query("SELECT key, value FROM meta")
        try:
            meta = {key: json.loads(value) for key, value in rows}
        except (ValueError, RecursionError) as err:
            raise self._unreadable(err) from None
        bad = sorted(set(_META) - set(meta)) or [k for k, ok in _META.items() if not ok(meta[k])]
        if bad:
            why = f"{bad[0]} is {json.dumps(meta[bad[0]])[:40]}" if bad[0] in meta else f"lacks {', '.join(bad)}"
            raise self._unreadable(f"meta {why}")
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
        path, problem = self.folder / str(row.file), outside(self.root, row.file)  # outside: not read
        if problem is None and row.slot is None:
            try:
                problem = None if sha256_hex(path.read_bytes()) == row.bytes_sha256 else "bytes do not match: corrupted"
            except OSError:
                problem = "missing"
        elif problem is None:
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
        digest = sha256_hex(data)
        name = file_name(doc.id, digest)
        write_bytes_atomic(self.folder / name, data)
        self._commit(name, len(data), [(doc.id, doc.sha256, self.tag, name, None, digest)])

    def flush(self):
        """Write and commit every full shard of buffered documents."""
        while self.shard_size and len(self._buffer) >= self.shard_size:
            self._write_shard(self._buffer[: self.shard_size])
            del self._buffer[: self.shard_size]

    def close(self):
        """The end of a build: write the last, partial shard; delete the payloads no document uses."""
        check_links(self.folder)
        if self._buffer:
            self._write_shard(self._buffer)
            self._buffer.clear()
        used = {file for (file,) in self._query("SELECT DISTINCT file FROM documents")}
        with self._db() as db:
            db.execute("DELETE FROM payloads WHERE file NOT IN (SELECT file FROM documents)")
        for path in payload_files(self.folder, temporary=True):
            if path.relative_to(self.folder).as_posix() not in used:
                path.unlink(missing_ok=True)
        self._present = None

    def _write_shard(self, batch):
        check_links(self.folder)
        seq = self._meta()["next_shard"]
        name = f"shards/{seq:010d}.safetensors"
        data, digests = shard_bytes([params for _, params in batch], self.folder / name)
        write_bytes_atomic(self.folder / name, data)
        self._commit(
            name,
            len(data),
            [
                (doc.id, doc.sha256, self.tag, name, slot, digest)
                for slot, ((doc, _), digest) in enumerate(zip(batch, digests))
            ],
            seq + 1,
        )

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
        for path in payload_files(self.folder):  # never a symbolic link
            if path.parent != self.folder and path.name[0].isdigit() and file_seq(path) >= self._meta()["next_shard"]:
                try:
                    rows = shard_rows(self.folder, Shard(path))
                except DocParamsError as err:
                    warnings.warn(f"{err}; an unlisted shard, ignored (its documents are encoded again)", stacklevel=3)
                    rows = []
                self._commit(path.relative_to(self.folder).as_posix(), path.stat().st_size, rows, file_seq(path) + 1)

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
        return read_document_file(
            located(self.folder, self.root, file), self.fingerprint, self.device, self.dtype, digest
        )[0]

    def __getitem__(self, doc_id):
        row = self._row(doc_id)
        while True:
            if row is None:
                raise KeyError(doc_id)
            located(self.folder, self.root, row.file, row.id)  # a StoreError if it is not the store's
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


def shard_rows(folder, shard):
    """The catalog rows of a shard's documents, from its header."""
    file = shard.path.relative_to(folder).as_posix()
    return [
        (
            shard.field(s, "doc_id"),
            shard.field(s, "doc_sha256"),
            training_tag(shard.field(s, "training")),
            file,
            s,
            shard.documents[s]["sha256"],
        )
        for s in range(len(shard.documents))
    ]


def write_catalog(path, meta, rows, sizes):
    """A whole catalog, atomically: written and committed under a temporary name, then renamed over `path`.
    rows: the documents' rows; sizes: payload file -> bytes."""
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    for leftover in (tmp, Path(f"{tmp}-journal")):  # of a killed catalog write
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

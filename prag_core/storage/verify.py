"""Checking and repairing a store: `prag store verify [--repair]`.

verify() reads every byte the catalog lists and reports each problem in one line (a missing or damaged
payload, a slot holding another document than its row says, a row naming a file outside the store, which
is not opened (folder.py), documents of several training configs);
run_verify() prints them and, with --repair, drops the documents concerned (the next `prag build`
encodes them again). rebuild_catalog() lists every readable payload file of a folder in a new catalog,
where the catalog is lost or unreadable. The catalog's format and a build's writes are store.py's.
"""

import warnings
from itertools import groupby

from tqdm.auto import tqdm

from prag_core.pairs.doc_params import DocParamsError
from prag_core.storage.folder import CATALOG, StoreError, check_links, located, payload_files, refuse_pre_release
from prag_core.storage.payloads import Shard, file_seq, read_document_file, sha256_hex
from prag_core.storage.store import Store, check_fingerprint, shard_rows, training_tag, write_catalog


def _scan(folder):
    """(rows by id, payload file -> bytes, a DocParams read, most documents in a shard) of every readable
    payload in `folder` trained for the first one's model; a document in several shards is taken from the
    last. The others are left out with a warning (their documents are encoded again)."""
    rows, sizes, first, largest, fingerprint = {}, {}, None, 0, None
    for path in payload_files(folder):  # never a symbolic link
        try:
            if path.parent == folder:
                params, data = read_document_file(path)
                meta = params.meta
                if "doc_id" not in meta or "doc_sha256" not in meta:
                    raise DocParamsError(f"{path}: metadata fields 'doc_id'/'doc_sha256' are missing")
                found = [
                    (
                        meta["doc_id"],
                        meta["doc_sha256"],
                        training_tag(meta.get("training")),
                        path.name,
                        None,
                        sha256_hex(data),
                    )
                ]
            else:
                shard = Shard(path)
                found, params = shard_rows(folder, shard), shard.read(0)
                largest = max(largest, len(found))
            fingerprint = fingerprint or params.meta["fingerprint"]
            check_fingerprint(path, params.meta["fingerprint"], fingerprint)
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
    them again). A pre-release store is refused (a StoreError), untouched. Returns the number of documents
    listed."""
    refuse_pre_release(folder)
    check_links(folder)
    rows, sizes, first, largest = _scan(folder)
    if first is None:
        raise StoreError(f"{folder}: no readable payload files to list in a new catalog")
    shards = [file_seq(file) for file in sizes if file.startswith("shards/")]
    meta = {
        "fingerprint": first.meta["fingerprint"],
        "dtype": str(first.tensors()[0].dtype).removeprefix("torch."),
        "shard_size": largest or None,
        "next_shard": max(shards, default=-1) + 1,
    }
    write_catalog(folder / CATALOG, meta, list(rows.values()), sizes)
    return len(rows)


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

    for file, rows in tqdm(
        groupby(store.rows(), key=lambda row: row.file), desc="verify", unit="file", disable=not progress
    ):
        rows = list(rows)
        ids = ", ".join(repr(row.id) for row in rows)
        try:
            path = located(store.folder, store.root, file)
        except StoreError as err:  # not opened
            fail(f"{err} (documents {ids})", rows)
            continue
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
                    raise DocParamsError(
                        f"{where}: holds document {meta.get('doc_id')!r}, the catalog says "
                        f"{row.id!r} (text sha256 {row.sha256})"
                    )
            except DocParamsError as err:
                fail(str(err), [row])
    tags = store.tags()
    if len(tags) > 1:
        problems.append(
            f"{store.path}: documents trained with {len(tags)} training configs "
            f"({', '.join(f'{n} tagged {tag}' for tag, n in sorted(tags.items()))})"
        )
    return problems, bad


def run_verify(folder, repair=False, progress=True):
    """`prag store verify`: print every problem, then a summary. With `repair`, drop the documents concerned
    so the next `prag build` encodes them again, and list the payload files in a new catalog where it is
    lost or unreadable (`folder`: a work directory's store folder). Returns the exit status (1: problems found)."""
    check_links(folder)  # not a lost catalog: not repaired
    try:
        store = Store(folder)
        problems, bad = verify(store, progress)
    except StoreError:
        if not (repair and payload_files(folder)):
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

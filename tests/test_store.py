"""The parameter store: both layouts round trip, done/tags, killed writes and kill -9, corruption, verify/repair,
a lost catalog, a reader during writes, and the refusal of a pre-release store."""

import contextlib
import gc
import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from tiny import random_doc_params, tiny_llama

from prag_core.cli import main
from prag_core.corpus import Document, text_sha256
from prag_core.model.inject import inject
from prag_core.pairs.doc_params import DocParamsError, model_fingerprint
from prag_core.storage import payloads
from prag_core.storage.payloads import shard_bytes
from prag_core.storage.store import CATALOG, Store, StoreError, training_tag
from prag_core.storage.verify import run_verify, verify

pytestmark = pytest.mark.usefixtures("one_thread")
TRAINING = {"rank": 2, "lr": 0.001}
LAYOUTS = {"files": None, "sharded": 2}


@pytest.fixture(scope="module")
def model():
    return inject(tiny_llama())


@pytest.fixture(scope="module")
def fp(model):
    return model_fingerprint(model)


@pytest.fixture(scope="module")
def params(model):
    """Six documents' random pairs, with the training config the trainer records."""
    docs = random_doc_params(model, n=6, seed=1)
    for p in docs:
        p.meta["training"] = TRAINING
    return docs


def _doc(i, text=None):
    text = text or f"Document number {i}."
    return Document(id=f"doc/{i}", text=text, title=None, sha256=text_sha256(text))


def _build(folder, fp, params, n=5, shard_size=2, storage_dtype=None, close=True, training=TRAINING):
    store = Store(folder, fp, training, storage_dtype=storage_dtype, shard_size=shard_size)
    for i in range(n):
        store.put(_doc(i), params[i])
        store.flush()
    if close:
        store.close()
    return store


def _equal(loaded, params, dtype=torch.float32):
    return all(
        torch.equal(loaded.pairs[p][i], params.pairs[p][i].to(dtype).to(loaded.pairs[p][i].dtype))
        for p in params.pairs
        for i in (0, 1)
    )


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _snapshot(folder):
    """Every file and folder under `folder`: path -> bytes (None for a folder)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def _slot_span(path, slot):
    """Byte range of a slot's tensor in a shard file."""
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    begin, end = json.loads(raw[8 : 8 + size])[str(slot)]["data_offsets"]
    return 8 + size + begin, 8 + size + end


@pytest.mark.parametrize(
    "shard_size, storage_dtype", [(None, "float32"), (None, "float16"), (2, "float32"), (2, "bfloat16"), (2, "float16")]
)
def test_round_trip(tmp_path, fp, params, shard_size, storage_dtype):
    _build(tmp_path, fp, params, shard_size=shard_size, storage_dtype=storage_dtype)
    payloads = [f for f in _files(tmp_path) if not f.startswith(CATALOG)]
    assert len(payloads) == (3 if shard_size else 5)
    assert all(f.startswith("shards/") if shard_size else "/" not in f for f in payloads)
    served = Store(tmp_path, fp)  # serving: no training config needed
    stored = getattr(torch, storage_dtype)
    assert len(served) == 5 and list(served) == [f"doc/{i}" for i in range(5)]
    assert "doc/0" in served and "doc/9" not in served
    for i in range(5):
        loaded = served[f"doc/{i}"]
        assert loaded.meta["doc_id"] == f"doc/{i}" and loaded.meta["doc_sha256"] == _doc(i).sha256
        assert next(iter(loaded.pairs.values()))[0].dtype == stored and _equal(loaded, params[i], stored)
    upcast = Store(tmp_path, fp, compute_dtype=torch.float32)["doc/3"]  # serving an fp32 model
    assert next(iter(upcast.pairs.values()))[0].dtype == torch.float32 and _equal(upcast, params[3], stored)
    with pytest.raises(KeyError):
        served["doc/9"]
    assert served.size_bytes() == sum((tmp_path / f).stat().st_size for f in _files(tmp_path))
    assert Store(tmp_path).fingerprint == fp  # the store's own fingerprint (export)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_done_tags_and_what_is_redone(tmp_path, fp, params, layout):
    store = _build(tmp_path, fp, params, n=4, shard_size=LAYOUTS[layout])
    assert [store.done(_doc(i)) for i in range(5)] == [True] * 4 + [False]
    assert not store.done(_doc(1, "Changed text."))
    other = {**TRAINING, "rank": 4}
    rebuild = Store(tmp_path, fp, other)
    assert not rebuild.done(_doc(0)) and Store(tmp_path, fp).done(_doc(0))  # another training config; any config
    rebuild.put(_doc(0), params[5])
    rebuild.close()
    assert store.tags() == {training_tag(TRAINING): 3, training_tag(other): 1} and rebuild.tag == training_tag(other)
    assert rebuild.done(_doc(0)) and not store.done(_doc(0))
    tags = sorted([training_tag(TRAINING), training_tag(other)])
    counts = {training_tag(TRAINING): 3, training_tag(other): 1}
    assert verify(store, progress=False) == (
        [
            f"{store.path}: documents trained with 2 training configs "
            f"({', '.join(f'{counts[t]} tagged {t}' for t in tags)})"
        ],
        set(),
    )
    victim = tmp_path / next(row.file for row in store.rows() if row.id == "doc/2")
    if layout == "files":
        victim.write_bytes(victim.read_bytes()[:-40])  # torn
        message = r"doc_2-.*safetensors: bytes do not match: corrupted; re-encoding document 'doc/2'"
    else:
        victim.unlink()
        message = r"shards/0000000001.safetensors: missing; re-encoding document 'doc/2'"
    with pytest.warns(UserWarning, match=message):
        assert not Store(tmp_path, fp, TRAINING).done(_doc(2))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reencoded_and_removed_documents_leave_no_garbage(tmp_path, fp, params, layout):
    _build(tmp_path, fp, params, n=4, shard_size=LAYOUTS[layout])  # shards 0: doc/0, doc/1; 1: doc/2, doc/3
    before = set(_files(tmp_path))
    store = Store(tmp_path, fp, TRAINING)
    changed = _doc(0, "A new text.")
    assert not store.done(changed)
    store.put(changed, params[5])
    store.retain(["doc/0", "doc/1"])  # doc/2 and doc/3 left the corpus
    assert sorted(Store(tmp_path, fp)) == ["doc/0", "doc/1"]  # committed before close
    store.close()
    rows = {row.id: row for row in store.rows()}
    assert sorted(rows) == ["doc/0", "doc/1"] and rows["doc/0"].sha256 == changed.sha256
    assert {f for f in _files(tmp_path) if not f.startswith(CATALOG)} == {row.file for row in rows.values()}
    assert rows["doc/1"].file in before and rows["doc/0"].file not in before
    assert _equal(store["doc/0"], params[5]) and _equal(store["doc/1"], params[1])


def test_killed_writes_are_adopted_or_swept(tmp_path, fp, params):
    """Killed between a shard's rename and its commit: the next build adopts the shard. A document file
    without its commit, temp files of torn writes and an unreadable unlisted shard are swept at close."""
    _build(tmp_path, fp, params, n=2)  # shard 0
    shards = tmp_path / "shards"
    orphans = [params[i].to() for i in (2, 3)]
    for i, p in zip((2, 3), orphans):
        p.meta.update(doc_id=f"doc/{i}", doc_sha256=_doc(i).sha256)
    (shards / "0000000001.safetensors").write_bytes(shard_bytes(orphans, "test")[0])
    (shards / "0000000002.safetensors").write_bytes(b"\0" * 64)
    (shards / ".0000000003.safetensors.x1.tmp").write_bytes(b"torn")
    files = Store(tmp_path / "files", fp, TRAINING)
    files.put(_doc(0), params[0])
    (tmp_path / "files" / "doc_7-0123456789ab.0123456789ab.safetensors").write_bytes(b"unlisted")
    (tmp_path / "files" / ".doc_8-0123.safetensors.x2.tmp").write_bytes(b"torn")
    assert len(Store(tmp_path, fp)) == 2  # a reader does not adopt
    with pytest.warns(UserWarning, match="0000000002.safetensors: not a readable safetensors shard.*unlisted shard"):
        store = Store(tmp_path, fp, TRAINING, shard_size=2)
    assert [store.done(_doc(i)) for i in range(4)] == [True] * 4 and _equal(store["doc/3"], params[3])
    for s in (store, files):
        s.close()
    assert _files(shards) == ["0000000000.safetensors", "0000000001.safetensors"]
    assert [f for f in _files(tmp_path / "files") if not f.startswith(CATALOG)] == [files.rows()[0].file]
    store.put(_doc(4), params[4])
    store.close()
    assert store.rows()[-1].file == "shards/0000000003.safetensors"  # numbers are never reused


def test_sigkill_mid_build_leaves_a_sound_store(tmp_path, fp):
    """A writer killed (SIGKILL) at a random point: every listed document loads, nothing else is listed,
    and the next build resumes and leaves no garbage."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from tiny import random_doc_params, tiny_llama
        from prag_core.corpus import Document, text_sha256
        from prag_core.model.inject import inject
        from prag_core.storage.store import Store
        model = inject(tiny_llama())
        stores = [Store({str(tmp_path)!r} + "/" + name, {fp!r}, {TRAINING!r}, shard_size=size)
                  for name, size in (("files", None), ("sharded", 3))]
        params = random_doc_params(model, n=4)
        for p in params:
            p.meta["training"] = {TRAINING!r}
        for i in range(10**6):
            text = f"Document number {{i}}."
            for store in stores:
                store.put(Document(id=f"doc/{{i}}", text=text, title=None, sha256=text_sha256(text)), params[i % 4])
                store.flush()
            if i == 20:
                print("ready", flush=True)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1")
    )
    assert proc.stdout.readline() == "ready\n"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for name in ("files", "sharded"):
        folder = tmp_path / name
        store = Store(folder, fp, TRAINING)
        listed = sorted(store, key=lambda doc_id: int(doc_id.split("/")[1]))
        n = len(listed)
        assert n > 20 and listed == [f"doc/{i}" for i in range(n)]
        assert all(store.done(_doc(i)) for i in range(n)) and not store.done(_doc(n))
        for doc_id in listed:
            assert store[doc_id].meta["doc_id"] == doc_id
        store.put(_doc(n), store["doc/0"])
        store.close()
        assert {f for f in _files(folder) if not f.startswith(CATALOG)} == {row.file for row in store.rows()}


def test_lazy_load_reads_only_the_requested_document(tmp_path, fp, params):
    """Another document's bytes in the same shard are garbage and another shard is gone: the requested one
    still loads; the garbage one fails on its checksum."""
    _build(tmp_path, fp, params)
    shard = tmp_path / "shards" / "0000000000.safetensors"  # doc/0 (slot 0), doc/1 (slot 1)
    begin, end = _slot_span(shard, 1)
    raw = bytearray(shard.read_bytes())
    raw[begin:end] = b"\xff" * (end - begin)  # NaNs
    shard.write_bytes(bytes(raw))
    (tmp_path / "shards" / "0000000001.safetensors").unlink()  # doc/2, doc/3
    served = Store(tmp_path, fp)
    assert _equal(served["doc/0"], params[0]) and _equal(served["doc/4"], params[4])
    with pytest.raises(DocParamsError, match=r"0000000000.safetensors \[slot 1, document 'doc/1'\]: sha256"):
        served["doc/1"]


def test_verify_reports_every_corruption_and_repair_drops_them(tmp_path, fp, params, capsys):
    work = tmp_path / "W"
    _build(work / "store", fp, params, n=6)
    files = tmp_path / "F" / "store"  # and a store of document files, its only file corrupted
    Store(files, fp, TRAINING).put(_doc(0), params[0])
    (files / Store(files).rows()[0].file).write_bytes(b"\0" * 64)
    assert main(["store", "verify", "--workdir", str(work)]) == 0
    shards = work / "store" / "shards"
    begin, _ = _slot_span(shards / "0000000000.safetensors", 1)
    raw = bytearray((shards / "0000000000.safetensors").read_bytes())
    raw[begin + 5] ^= 0x01  # one flipped bit: finite, the right shape, only the checksum sees it
    (shards / "0000000000.safetensors").write_bytes(bytes(raw))
    (shards / "0000000001.safetensors").write_bytes(b"\x00" * 64)  # doc/2, doc/3: unreadable
    (shards / "0000000002.safetensors").unlink()  # doc/4, doc/5: missing
    capsys.readouterr()
    assert main(["store", "verify", "--workdir", str(work), "--repair"]) == 1
    problems = capsys.readouterr().out.splitlines()
    assert len(problems) == 5 and "sha256" in problems[0] and "'doc/1'" in problems[0]
    assert "not a readable safetensors shard" in problems[1] and "'doc/2', 'doc/3'" in problems[1]
    assert problems[2].endswith("0000000002.safetensors: missing (documents 'doc/4', 'doc/5')")
    assert problems[3].endswith("3 problem(s), 5 document(s) affected") and "dropped 5 document(s)" in problems[4]
    store = Store(work / "store", fp, TRAINING)
    assert [store.done(_doc(i)) for i in range(6)] == [True] + [False] * 5
    assert run_verify(work / "store", progress=False) == 0
    assert run_verify(files, repair=True, progress=False) == 1
    assert "doc_0-" in capsys.readouterr().out and len(Store(files)) == 0
    assert main(["store", "verify", "--workdir", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.strip().endswith(f"no parameter store here (no {CATALOG}); run `prag build` first")


@pytest.mark.parametrize("damage", ["deleted", "garbage", "a page"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_lost_catalog_is_one_line_and_repair_lists_the_payloads_again(tmp_path, fp, params, capsys, layout, damage):
    work = tmp_path / "W"
    _build(work / "store", fp, params, n=5, shard_size=LAYOUTS[layout])
    catalog = work / "store" / CATALOG
    gc.collect()  # the writer's connection: closed, so that the WAL is checkpointed into the catalog
    if damage == "a page":
        raw = bytearray(catalog.read_bytes())
        raw[2 * 4096 : 3 * 4096] = b"\x5a" * 4096  # page 3 of the catalog overwritten
        catalog.write_bytes(bytes(raw))
    else:
        for f in (work / "store").glob(CATALOG + "*"):
            f.unlink()
    if damage == "garbage":
        catalog.write_bytes(b"not a database, not at all" * 10)
    expected = "missing, but payload files are there" if damage == "deleted" else "unreadable catalog"
    if damage != "a page":  # that one may open, and fails where the page is needed
        with pytest.raises(StoreError, match=expected):
            Store(work / "store", fp)
    capsys.readouterr()
    assert main(["store", "verify", "--workdir", str(work)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err and "prag store verify --repair" in err
    assert main(["store", "verify", "--workdir", str(work), "--repair"]) == 0
    assert "listed 5 document(s) of the payload files in a new catalog.sqlite" in capsys.readouterr().out
    store = Store(work / "store", fp, TRAINING, shard_size=LAYOUTS[layout])
    assert all(store.done(_doc(i)) for i in range(5)) and _equal(store["doc/4"], params[4])
    assert store.shard_size == LAYOUTS[layout] and store.storage_dtype == "float32"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_reader_sees_writes_without_reopening(tmp_path, fp, params, layout):
    """A reader thread answers lookups and loads while a writer adds, replaces and drops documents (and its
    close() deletes superseded payloads): no error, and every document committed before a lookup is seen."""
    writer = Store(tmp_path, fp, TRAINING, shard_size=LAYOUTS[layout])
    reader = Store(tmp_path, fp)
    reader._load = reader._read  # no cache: every load reads the payload
    published = [(0, frozenset())]  # (generation, the ids committed): replaced whole by the writer
    stop, errors, counts = threading.Event(), [], {"checked": 0, "loaded": 0}

    def read():
        while not stop.is_set():
            try:
                generation, expected = published[0]
                ids = set(reader)
                if published[0][0] == generation:  # no commit or drop announced during the lookup
                    assert expected <= ids, sorted(expected - ids)
                    counts["checked"] += 1
                for doc_id in ids:
                    try:
                        assert reader[doc_id].meta["doc_id"] == doc_id
                        counts["loaded"] += 1
                    except KeyError:  # dropped since
                        pass
            except Exception as err:  # noqa: BLE001 -- handed to the main thread
                errors.append(err)
                return

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for round_ in range(4):
            for i in range(6):
                writer.put(_doc(i, f"Round {round_}, document {i}."), params[(i + round_) % 6])
                writer.flush()
            writer.close()
            published[0] = (2 * round_ + 1, frozenset(f"doc/{i}" for i in range(6)))
            time.sleep(0.05)
            keep = [f"doc/{i}" for i in range(6) if (i + round_) % 3]
            published[0] = (2 * round_ + 2, frozenset(keep))  # before the drop: a lookup may see it at once
            writer.retain(keep)
            writer.close()
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join()
    assert not errors, errors[0]
    assert counts["checked"] > 0 and counts["loaded"] > 0 and set(reader) == published[0][1]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_read_racing_a_replacement_looks_up_again(tmp_path, fp, params, layout):
    """The writer replaces a document and deletes its old payload between a reader's lookup and its read:
    the reader gets the new version, not an error."""
    writer = _build(tmp_path, fp, params, n=2, shard_size=LAYOUTS[layout])
    reader = Store(tmp_path, fp)
    reader._load = reader._read  # no cache
    lookup, writes = reader._row, []

    def racing(doc_id):
        row = lookup(doc_id)
        if writes:
            writes.pop()()
        return row

    def replace():
        writer.put(_doc(0, "A new text."), params[5])
        writer.retain(["doc/0"])
        writer.close()  # deletes doc/0's old payload

    reader._row = racing
    writes.append(replace)
    assert _equal(reader["doc/0"], params[5])


def _pre_release_store(folder, fp, params, layout):
    """A store as a pre-release prag left it: document files and manifest.json ("files"); shards with
    index.safetensors, journal.jsonl and manifest.json ("sharded"); or those shards without the manifest."""
    docs = [params[i].to() for i in range(2)]
    for i, p in enumerate(docs):
        p.meta.update(doc_id=f"doc/{i}", doc_sha256=_doc(i).sha256)
    folder.mkdir(parents=True)
    if layout == "files":
        for i, p in enumerate(docs):
            p.save(folder / f"doc_{i}-{hashlib.sha256(f'doc/{i}'.encode()).hexdigest()[:12]}.safetensors")
    else:
        (folder / "shards").mkdir()
        (folder / "shards" / "0000000000.safetensors").write_bytes(shard_bytes(docs, "old")[0])
        save_file(
            {"slot": np.arange(2, dtype=np.int32)},
            folder / "index.safetensors",
            metadata={
                "format": "prag.store_index",
                "shards": json.dumps([["0000000000.safetensors", training_tag(TRAINING)]]),
                "next_shard": "1",
            },
        )
        (folder / "journal.jsonl").write_text(json.dumps({"drop": ["doc/1"]}) + "\n")
    if layout != "sharded, manifest lost":
        (folder / "manifest.json").write_text(
            json.dumps(
                {
                    "format": "prag.store",
                    "format_version": 1,
                    "layout": layout,
                    "dtype": "float32",
                    "fingerprint": fp,
                    "training": TRAINING,
                }
            )
        )


@pytest.mark.parametrize("layout", ["files", "sharded", "sharded, manifest lost"])
def test_a_pre_release_store_is_refused_in_one_line_and_left_as_it_is(tmp_path, fp, params, capsys, layout):
    work = tmp_path / "W"
    folder = work / "store"
    _pre_release_store(folder, fp, params, layout)
    before = _snapshot(folder)
    name = "index.safetensors" if layout == "sharded, manifest lost" else "manifest.json"
    line = f"{folder}: a store from a pre-release prag ({name}); rebuild it: delete {folder} and run `prag build` again"
    for opening in (
        {},
        {"fingerprint": fp},
        {"fingerprint": fp, "training": TRAINING},  # export, serve, build
        {"fingerprint": fp, "training": TRAINING, "shard_size": 2},
    ):
        with pytest.raises(StoreError) as refused:
            Store(folder, **opening)
        assert str(refused.value) == line
    capsys.readouterr()
    for repair in ([], ["--repair"]):
        assert main(["store", "verify", "--workdir", str(work), *repair]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.splitlines() == [f"prag: error: {line}"]
    assert _snapshot(folder) == before and not (folder / CATALOG).exists()


def test_layout_and_dtype_stay_what_the_store_was_made_with(tmp_path, fp, params):
    files = Store(tmp_path / "files", fp, TRAINING, storage_dtype="float16")
    files.put(_doc(0), params[0])
    assert next(iter(Store(tmp_path / "files", fp)["doc/0"].pairs.values()))[0].dtype == torch.float16
    with pytest.raises(StoreError, match="one file per document; a sharded store needs another work directory"):
        Store(tmp_path / "files", fp, TRAINING, shard_size=4)
    with pytest.raises(StoreError, match="stores pairs in float16; storing bfloat16 needs another work directory"):
        Store(tmp_path / "files", fp, TRAINING, storage_dtype="bfloat16")
    with pytest.raises(StoreError, match="storage dtype: unknown 'int8'"):
        Store(tmp_path / "new", fp, TRAINING, storage_dtype="int8")
    _build(tmp_path / "sharded", fp, params, n=1)
    assert Store(tmp_path / "sharded", fp, TRAINING, shard_size=8).shard_size == 8
    assert Store(tmp_path / "sharded", fp).shard_size == 8  # applies from now on
    with pytest.raises(StoreError, match=r"built for another model.*weight_hash"):
        Store(tmp_path / "sharded", model_fingerprint(inject(tiny_llama(seed=3))))
    with sqlite3.connect(tmp_path / "sharded" / CATALOG) as db:
        db.execute("DELETE FROM meta WHERE key = 'dtype'")
    with pytest.raises(StoreError, match=r"catalog.sqlite: unreadable catalog \(meta lacks dtype\)"):
        Store(tmp_path / "sharded", fp)


_OPENS = []  # while _opened() records: a list to add every path opened to
sys.addaudithook(lambda event, args: _OPENS and event == "open" and _OPENS[-1].append(args[0]))


@contextlib.contextmanager
def _opened(monkeypatch):
    """Every path opened inside the block: by Python (its "open" audit event: open, io.open, os.open) and by
    safetensors' safe_open (a shard, memory-mapped)."""
    paths, safe_open = [], payloads.safe_open
    monkeypatch.setattr(payloads, "safe_open", lambda path, **kw: paths.append(path) or safe_open(path, **kw))
    _OPENS.append(paths)
    try:
        yield paths
    finally:
        _OPENS.remove(paths)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_symlinked_shards_folder_is_refused_and_nothing_outside_is_touched(tmp_path, fp, params, capsys, layout):
    """shards/ replaced by a symbolic link to a folder elsewhere holding payload-like and temp files (sharded: the
    store's shards, moved there): a writer's close() (which writes the last shard and deletes unlisted payloads
    and temp files), opening the store and `prag store verify [--repair]` are refused in one line, and every file
    there stays as it was."""
    work, elsewhere = tmp_path / "W", tmp_path / "elsewhere"
    folder = work / "store"
    writer = _build(folder, fp, params, n=3, shard_size=LAYOUTS[layout], close=False)  # sharded: doc/2 buffered
    if layout == "sharded":
        (folder / "shards").rename(elsewhere)
    else:
        elsewhere.mkdir()
    for name in ("keep.safetensors", "0000000009.safetensors", ".0000000009.safetensors.ab12.tmp", "x.tmp"):
        (elsewhere / name).write_bytes(os.urandom(1000))
    (folder / "shards").symlink_to(elsewhere, target_is_directory=True)
    before = _snapshot(elsewhere)
    line = (
        f"{folder / 'shards'}: a symbolic link (to {elsewhere}); a store never follows links out of its folder: "
        f"put the real folder there"
    )
    with pytest.raises(StoreError) as refused:
        writer.close()
    assert str(refused.value) == line
    for opening in ({}, {"fingerprint": fp}, {"fingerprint": fp, "training": TRAINING, "shard_size": 2}):
        with pytest.raises(StoreError) as refused:
            Store(folder, **opening)
        assert str(refused.value) == line
    capsys.readouterr()
    for repair in ([], ["--repair"]):
        assert main(["store", "verify", "--workdir", str(work), *repair]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.splitlines() == [f"prag: error: {line}"]
    assert _snapshot(elsewhere) == before


@pytest.mark.parametrize("where", ["../../outside.safetensors", "an absolute path", "a symbolic link"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_row_or_payload_outside_the_store_is_refused_and_never_opened(
    tmp_path, fp, params, capsys, monkeypatch, layout, where
):
    """doc/1's catalog row names a file outside the store (a path up and out of it, an absolute path), or its
    payload (sharded: the shard of doc/0 and doc/1) is a symbolic link to one. The outside file is a copy of the
    payload, so that reading it would succeed: loading the document, done() and verify open nothing outside
    and say so in one line naming the row; `verify --repair` drops the row, the next build encodes it again,
    and a catalog rebuilt from the payload files does not list the link. The outside file is never changed.
    The store is reached through a symbolic link to its work directory, which is allowed."""
    work, outside = tmp_path / "W", tmp_path / "outside.safetensors"
    _build(work / "store", fp, params, n=3, shard_size=LAYOUTS[layout])  # sharded: doc/0, doc/1 | doc/2
    (tmp_path / "via").symlink_to(work, target_is_directory=True)
    folder, file = tmp_path / "via" / "store", Store(work / "store")._row("doc/1").file
    payload = work / "store" / file
    outside.write_bytes(payload.read_bytes())
    copy = outside.read_bytes()
    if where == "a symbolic link":
        payload.unlink()
        payload.symlink_to(outside)
        listed, why = file, f"reached through a symbolic link (to {os.path.realpath(outside)})"
    else:
        listed = where if where.startswith("..") else str(outside)
        why = "a path out of the store ('..')" if where.startswith("..") else "an absolute path, outside the store"
        with sqlite3.connect(work / "store" / CATALOG) as db:
            db.execute("UPDATE documents SET file = ? WHERE id = 'doc/1'", (listed,))
    bad = ["doc/0", "doc/1"] if where == "a symbolic link" and layout == "sharded" else ["doc/1"]
    refusal = f"is {why}; not read (a store reads only its own files)"
    with _opened(monkeypatch) as opened:
        store = Store(folder, fp)
        for doc_id in bad:
            with pytest.raises(StoreError) as refused:
                store[doc_id]
            assert str(refused.value) == f"{folder / CATALOG}: document {doc_id!r}: its file {listed!r} {refusal}"
        assert _equal(store["doc/2"], params[2])
        with pytest.warns(UserWarning, match=re.escape(f"{why}; re-encoding document 'doc/1'")):
            assert not Store(folder, fp, TRAINING).done(_doc(1))
        ids = ", ".join(map(repr, bad))
        assert verify(store, progress=False) == (
            [f"{folder / CATALOG}: file {listed!r} {refusal} (documents {ids})"],
            set(bad),
        )
        capsys.readouterr()
        assert main(["store", "verify", "--workdir", str(tmp_path / "via"), "--repair"]) == 1
        assert f"dropped {len(bad)} document(s)" in capsys.readouterr().out
        writer = Store(folder, fp, TRAINING, shard_size=LAYOUTS[layout])
        assert sorted(writer) == sorted({"doc/0", "doc/2"} - set(bad))
        for doc_id in bad:
            i = int(doc_id[-1])
            writer.put(_doc(i), params[i])
        writer.close()
        assert all(_equal(Store(folder, fp)[f"doc/{i}"], params[i]) for i in range(3))
        for f in (work / "store").glob(CATALOG + "*"):
            f.unlink()
        assert main(["store", "verify", "--workdir", str(tmp_path / "via"), "--repair"]) == 0
        assert {row.id for row in Store(folder).rows()} == {"doc/0", "doc/1", "doc/2"}
        assert all(not (folder / row.file).is_symlink() for row in Store(folder).rows())
    assert outside.read_bytes() == copy
    opened = [os.path.realpath(p) for p in opened if not isinstance(p, int)]
    assert any(p.startswith(os.path.realpath(work / "store")) and p.endswith(".safetensors") for p in opened)
    assert os.path.realpath(outside) not in opened

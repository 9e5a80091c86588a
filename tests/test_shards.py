"""The sharded store: round trip in every storage dtype, lazy reads, crash recovery, verify, the 1M-entry open."""
import json
import time

import pytest
import torch
from tiny import random_doc_params, tiny_llama

from prag_core.cli import main
from prag_core.corpus import Document, text_sha256
from prag_core.doc_params import DocParamsError, model_fingerprint
from prag_core.inject import inject
from prag_core.shards import Entry, ShardedStore, _Index, open_store, run_verify, verify, write_index
from prag_core.store import Store, StoreError

TRAINING = {"rank": 2, "lr": 0.001}


@pytest.fixture(scope="module")
def model():
    return inject(tiny_llama())


@pytest.fixture(scope="module")
def fp(model):
    return model_fingerprint(model)


def _doc(i, text=None):
    text = text or f"Document number {i}."
    return Document(id=f"doc/{i}", text=text, title=None, sha256=text_sha256(text))


def _build(folder, model, fp, n=5, shard_size=2, storage_dtype="float32", close=True):
    """A sharded store of n random documents; returns (store, docs, params)."""
    store = open_store(folder, fp, TRAINING, storage_dtype=storage_dtype, shard_size=shard_size)
    docs, params = [_doc(i) for i in range(n)], random_doc_params(model, n=n, seed=1)
    for doc, p in zip(docs, params):
        p.meta["training"] = TRAINING
        store.put(doc, p)
        store.flush()
    if close:
        store.close()
    return store, docs, params


def _equal(loaded, params, dtype=torch.float32):
    return all(torch.equal(loaded.pairs[p][i], params.pairs[p][i].to(dtype).to(loaded.pairs[p][i].dtype))
               for p in params.pairs for i in (0, 1))


def _slot_span(path, slot):
    """Byte range of a slot's tensor in a shard file."""
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    begin, end = json.loads(raw[8:8 + size])[str(slot)]["data_offsets"]
    return 8 + size + begin, 8 + size + end


@pytest.mark.parametrize("storage_dtype", ["float32", "bfloat16", "float16"])
def test_round_trip(tmp_path, model, fp, storage_dtype):
    _, docs, params = _build(tmp_path, model, fp, storage_dtype=storage_dtype)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["layout"] == "sharded" and manifest["dtype"] == storage_dtype and manifest["shard_size"] == 2
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [f"{i:010d}.safetensors" for i in range(3)]
    assert (tmp_path / "journal.jsonl").read_bytes() == b""  # close() compacted it into the index
    stored = getattr(torch, storage_dtype)
    served = open_store(tmp_path, fp)  # as stored
    assert isinstance(served, ShardedStore) and len(served) == 5 and set(served) == {d.id for d in docs}
    assert "doc/0" in served and "doc/9" not in served
    for doc, p in zip(docs, params):
        loaded = served[doc.id]
        assert loaded.meta["doc_id"] == doc.id and loaded.meta["doc_sha256"] == doc.sha256
        assert next(iter(loaded.pairs.values()))[0].dtype == stored and _equal(loaded, p, stored)
    upcast = open_store(tmp_path, fp, compute_dtype=torch.float32)["doc/3"]  # serving an fp32 model
    assert next(iter(upcast.pairs.values()))[0].dtype == torch.float32 and _equal(upcast, params[3], stored)
    with pytest.raises(KeyError):
        served["doc/9"]
    files = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert served.size_bytes() == files


def test_lazy_load_reads_only_the_requested_document(tmp_path, model, fp):
    """Another document's bytes in the same shard are garbage and another shard is gone: the requested one
    still loads; the garbage one fails on its checksum."""
    _, docs, params = _build(tmp_path, model, fp)
    shard = tmp_path / "shards" / f"{0:010d}.safetensors"  # doc/0 (slot 0), doc/1 (slot 1)
    begin, end = _slot_span(shard, 1)
    raw = bytearray(shard.read_bytes())
    raw[begin:end] = b"\xff" * (end - begin)  # NaNs
    shard.write_bytes(bytes(raw))
    (tmp_path / "shards" / f"{1:010d}.safetensors").unlink()  # doc/2, doc/3
    served = open_store(tmp_path, fp)
    assert _equal(served["doc/0"], params[0]) and _equal(served["doc/4"], params[4])
    with pytest.raises(DocParamsError, match=r"0000000000.safetensors \[slot 1, document 'doc/1'\]: sha256"):
        served["doc/1"]


def test_verify_reports_every_corruption_and_repair_drops_them(tmp_path, model, fp, capsys):
    work = tmp_path / "W"
    _build(work / "store", model, fp, n=7)
    assert verify(work / "store", progress=False) == ([], set())
    assert main(["store", "verify", "--workdir", str(work)]) == 0
    shards = work / "store" / "shards"
    begin, _ = _slot_span(shards / f"{0:010d}.safetensors", 1)
    raw = bytearray((shards / f"{0:010d}.safetensors").read_bytes())
    raw[begin + 5] ^= 0x01  # one flipped bit: finite, the right shape, only the checksum sees it
    (shards / f"{0:010d}.safetensors").write_bytes(bytes(raw))
    (shards / f"{1:010d}.safetensors").write_bytes(b"\x00" * 64)  # doc/2, doc/3: unreadable
    (shards / f"{3:010d}.safetensors").unlink()  # doc/6: missing
    problems, bad = verify(work / "store", progress=False)
    assert bad == {"doc/1", "doc/2", "doc/3", "doc/6"} and len(problems) == 3
    assert "sha256" in problems[0] and "'doc/1'" in problems[0]
    assert "not a readable safetensors shard" in problems[1] and "'doc/2', 'doc/3'" in problems[1]
    assert problems[2].endswith("0000000003.safetensors: missing (documents 'doc/6')")
    capsys.readouterr()
    assert main(["store", "verify", "--workdir", str(work), "--repair"]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[:3] == problems
    assert "3 problem(s), 4 document(s) affected" in out and "dropped 4 document(s)" in out
    store = open_store(work / "store", fp, TRAINING)
    assert [store.done(_doc(i)) for i in range(7)] == [True, False, False, False, True, True, False]
    assert run_verify(work, progress=False) == 0
    assert main(["store", "verify", "--workdir", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.strip().endswith("no parameter store here (no manifest.json); run `prag build` first")


def test_resume_after_a_crash(tmp_path, model, fp):
    """Killed between a shard's write and its journal line (and with a torn line): the next build adopts the
    shard; documents still buffered are simply not done."""
    store, docs, _ = _build(tmp_path, model, fp, n=5, close=False)  # shards 0, 1 written; doc/4 buffered
    journal = tmp_path / "journal.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(lines[0] + lines[1][:20])  # shard 1's line torn
    store = open_store(tmp_path, fp, TRAINING)
    assert [store.done(d) for d in docs] == [True, True, True, True, False]
    assert journal.read_bytes().endswith(b"\n") and len(journal.read_bytes().splitlines()) == 2
    assert not store.done(_doc(1, "Changed text."))  # another text
    assert not open_store(tmp_path, fp, {**TRAINING, "lr": 0.01}).done(docs[0])  # another training config
    with pytest.warns(UserWarning, match=r"0000000001.safetensors: missing; re-encoding document 'doc/2'"):
        (tmp_path / "shards" / f"{1:010d}.safetensors").unlink()
        assert not open_store(tmp_path, fp, TRAINING).done(docs[2])


def test_reencoded_and_removed_documents(tmp_path, model, fp):
    store, docs, params = _build(tmp_path, model, fp, n=4)  # shards 0: doc/0, doc/1; 1: doc/2, doc/3
    changed = _doc(0, "A new text.")
    store = open_store(tmp_path, fp, TRAINING)
    assert not store.done(changed)
    store.put(changed, params[3])
    store.retain([d.id for d in docs[:2]])  # doc/2 and doc/3 left the corpus
    store.close()
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [f"{i:010d}.safetensors" for i in (0, 2)]
    served = open_store(tmp_path, fp)
    assert sorted(served) == ["doc/0", "doc/1"] and served.index.get("doc/0") == Entry(
        f"{2:010d}.safetensors", 0, changed.sha256)
    assert _equal(served["doc/0"], params[3]) and _equal(served["doc/1"], params[1])


def test_layout_and_dtype_stay_what_the_store_was_made_with(tmp_path, model, fp):
    files = open_store(tmp_path / "files", fp, TRAINING, storage_dtype="float16")
    assert type(files) is Store
    files.put(_doc(0), random_doc_params(model)[0])
    files.close()
    assert json.loads((tmp_path / "files" / "manifest.json").read_text())["layout"] == "files"
    assert next(iter(open_store(tmp_path / "files", fp)["doc/0"].pairs.values()))[0].dtype == torch.float16
    with pytest.raises(StoreError, match="one file per document; a sharded store needs another work directory"):
        open_store(tmp_path / "files", fp, TRAINING, shard_size=4)
    with pytest.raises(StoreError, match="stores pairs in float16; storing bfloat16 needs another work directory"):
        open_store(tmp_path / "files", fp, TRAINING, storage_dtype="bfloat16")
    _build(tmp_path / "sharded", model, fp, n=1)
    assert isinstance(open_store(tmp_path / "sharded", fp, TRAINING, shard_size=8), ShardedStore)
    with pytest.raises(StoreError, match="built for another model"):
        open_store(tmp_path / "sharded", model_fingerprint(inject(tiny_llama(seed=3))))


def test_a_million_entry_index_opens_in_under_a_second(tmp_path, fp):
    n = 1_000_000
    sha = "ab" * 32
    entries = {f"wiki:{i}": Entry(f"{i // 256:010d}.safetensors", i % 256, sha) for i in range(n)}
    write_index(tmp_path / "index.safetensors", entries, {f"{s:010d}.safetensors": "t" for s in range(n // 256 + 1)},
                n // 256 + 1)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "prag.store", "format_version": 1,
                                                        "layout": "sharded", "dtype": "bfloat16", "shard_size": 256,
                                                        "fingerprint": fp, "training": TRAINING}))
    start = time.perf_counter()
    store = open_store(tmp_path, fp)
    hits = [store.index.get(f"wiki:{i}") for i in range(0, n, 997)]
    seconds = time.perf_counter() - start
    assert len(store) == n and "wiki:-1" not in store
    assert hits[1] == Entry(f"{997 // 256:010d}.safetensors", 997 % 256, sha)
    assert seconds < 1.0, f"opening a 1M-document store and 1004 lookups took {seconds:.2f} s"


def test_index_journal_overlay_counts(tmp_path):
    index = _Index(tmp_path, writable=True)
    index.append({"shard": "0000000000.safetensors", "tag": "t", "ids": ["a", "b"], "sha256": ["0" * 64] * 2})
    index.append({"drop": ["a", "zz"]})
    index.append({"shard": "0000000001.safetensors", "tag": "t", "ids": ["b", "c"], "sha256": ["1" * 64] * 2})
    assert len(index) == 2 and sorted(index) == ["b", "c"] and index.next_shard == 2
    assert index.compact() == {"0000000001.safetensors"}
    reopened = _Index(tmp_path, writable=False)
    assert len(reopened) == 2 and reopened.get("b") == Entry("0000000001.safetensors", 0, "1" * 64)
    assert reopened.get("a") is None and reopened.next_shard == 2

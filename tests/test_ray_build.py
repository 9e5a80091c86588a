"""`prag build --ray` on a real local 2-CPU Ray cluster: the same store as the single-process build, a worker that
dies mid-batch, resume; and a build without --ray never imports Ray."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from tiny import tiny_llama, tiny_tokenizer

from prag_core.cli import main
from prag_core.offline import distributed
from prag_core.pairs.doc_params import DocParams
from prag_core.storage.payloads import Shard
from prag_core.storage.store import Store

DOCS = [{"id": f"d{i}", "text": f"Person {i} owns {i + 2} red kites. They fly over town {i} in May."} for i in range(6)]
FAST = ["--epochs", "2", "--batch-docs", "2", "--augmenter", "fallback", "--warmup", "none"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A saved tiny model, a corpus, and the single-process build's store (one torch thread, as a 1-CPU worker)."""
    tmp = tmp_path_factory.mktemp("ray_build")
    tiny_llama().save_pretrained(tmp / "model")
    tiny_tokenizer().save_pretrained(tmp / "model")
    (tmp / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert _build(tmp, tmp / "single") == 0
    finally:
        torch.set_num_threads(threads)
    return tmp


def _build(tmp, workdir, *extra):
    return main(
        [
            "build",
            "--corpus",
            str(tmp / "corpus.jsonl"),
            "--workdir",
            str(workdir),
            "--model",
            str(tmp / "model"),
            *FAST,
            *extra,
        ]
    )


def _tensors(workdir):
    """id -> {tensor name: tensor} of every document in a work directory's store (either layout, as stored)."""
    return {
        doc_id: {f"{p}.{s}": t for p, pair in doc.pairs.items() for s, t in zip("ab", pair)}
        for doc_id, doc in Store(workdir / "store").items()
    }


def _assert_same_store(one, other):
    assert set(one) == set(other) == {d["id"] for d in DOCS}
    for doc_id, tensors in one.items():
        assert tensors.keys() == other[doc_id].keys()
        for name, t in tensors.items():
            assert other[doc_id][name].dtype == t.dtype and torch.equal(other[doc_id][name], t), (doc_id, name)


@pytest.fixture(scope="module")
def cluster():
    import ray  # the `test` extra installs it

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.ray
def test_ray_build_equals_single_process_build(setup, cluster, capsys):
    assert _build(setup, setup / "ray", "--ray") == 0
    assert "built 6 documents (6 encoded now, 0 already in the store" in capsys.readouterr().out
    _assert_same_store(_tensors(setup / "single"), _tensors(setup / "ray"))
    deadline = time.monotonic() + 20
    while cluster.available_resources().get("CPU") != 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cluster.available_resources().get("CPU") == 2  # the workers were killed: their CPUs are free again


@pytest.mark.ray
def test_worker_dying_mid_batch_is_retried_and_every_document_written_once(setup, cluster, monkeypatch, capsys):
    """The first worker to finish a batch's training dies (os._exit) before returning it; Ray restarts it and
    re-runs the batch. Sharded store: every document is put once and sits in exactly one shard slot."""
    marker = setup / "died"

    class DiesOnce(distributed._Encoder):
        """The first worker to get here dies (os._exit, as if killed) after training, before returning."""

        def encode(self, texts, augs):
            result = super().encode(texts, augs)
            try:
                os.close(os.open(str(marker), os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return result
            os._exit(1)

    monkeypatch.setattr(distributed, "_Encoder", DiesOnce)
    cluster.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this module
    puts = []
    original_put = Store.put
    monkeypatch.setattr(Store, "put", lambda self, doc, params: (puts.append(doc.id), original_put(self, doc, params)))
    work = setup / "ray_sharded"
    assert _build(setup, work, "--ray", "--shard-size", "4") == 0
    assert marker.exists()  # a worker did die
    assert sorted(puts) == sorted(d["id"] for d in DOCS)
    shards = sorted((work / "store" / "shards").iterdir())
    slots = [Shard(p).field(s, "doc_id") for p in shards for s in range(len(Shard(p).documents))]
    assert len(shards) == 2 and sorted(slots) == sorted(d["id"] for d in DOCS)
    _assert_same_store(_tensors(setup / "single"), _tensors(work))
    assert main(["store", "verify", "--workdir", str(work)]) == 0

    # resume: one text changed, one document new; only those two are encoded
    monkeypatch.undo()
    changed = [dict(DOCS[0], text="Person 0 owns 9 blue kites.")] + DOCS[1:] + [{"id": "d6", "text": "A new doc."}]
    (setup / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in changed))
    capsys.readouterr()
    try:
        assert _build(setup, work, "--ray") == 0
    finally:
        (setup / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    assert "built 7 documents (2 encoded now, 5 already in the store" in capsys.readouterr().out
    assert len(Store(work / "store")) == 7


def test_build_without_ray_does_not_import_ray(setup, capsys):
    script = textwrap.dedent(f"""
        import sys
        from prag_core.cli import main
        rc = main(["build", "--corpus", {str(setup / "corpus.jsonl")!r}, "--workdir", {str(setup / "plain")!r},
                   "--model", {str(setup / "model")!r}, "--epochs", "1", "--batch-docs", "6", "--augmenter",
                   "fallback", "--shard-size", "4", "--store-dtype", "bf16"])
        print(rc, "ray" in sys.modules)
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1")
    )
    assert proc.stdout.splitlines()[-1] == "0 False", proc.stderr[-2000:]
    assert "built 6 documents" in proc.stdout and "MiB on disk" in proc.stdout
    store = Store(setup / "plain" / "store")
    assert store.shard_size == 4 and store.storage_dtype == "bfloat16"
    # served: the retrieved documents come out of the shards, upcast to the fp32 model's dtype
    assert main(["ask", "--workdir", str(setup / "plain"), "--device", "cpu", "How many kites does Person 3 own?"]) == 0
    assert "documents: d3, " in capsys.readouterr().out


def test_ray_flags_need_ray(setup, monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find_spec(name, *a))
    assert _build(setup, setup / "none", "--ray") == 2
    assert capsys.readouterr().err.strip() == "prag: error: --ray needs Ray: pip install 'prag[ray]'"
    monkeypatch.undo()
    assert _build(setup, setup / "none", "--workers", "2") == 2
    assert "--workers applies to --ray builds" in capsys.readouterr().err
    assert not (setup / "none").exists()


@pytest.mark.ray
def test_ray_build_with_a_warmup_pair_equals_single_process_build(setup, cluster, tmp_path):
    """The driver trains the warm-up pair once and sends it to every worker, where it is active beside each
    document as in the single-process build."""
    warm = tmp_path / "warm.jsonl"
    warm.write_text(
        "".join(
            json.dumps({"id": f"w{i}", "text": f"Ola has {i} blue boats. They sail at dawn."}) + "\n" for i in range(3)
        )
    )
    extra = ["--warmup", str(warm)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # one thread for both drivers too: they train the warm-up pair
        assert _build(setup, tmp_path / "single", *extra) == 0
        assert _build(setup, tmp_path / "ray", *extra, "--ray") == 0
    finally:
        torch.set_num_threads(threads)
    warm_single, warm_ray = (DocParams.load(tmp_path / w / "warmup.safetensors") for w in ("single", "ray"))
    assert warm_single.meta == warm_ray.meta
    assert all(torch.equal(t, u) for t, u in zip(warm_single.tensors(), warm_ray.tensors()))
    _assert_same_store(_tensors(tmp_path / "single"), _tensors(tmp_path / "ray"))

"""`prag build` end to end on a tiny model saved to disk (the real load_model path): outputs, resume after
a kill, changed and corrupted documents, every bad-input case."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import tiny_llama, tiny_tokenizer

from prag_core.cli import main
from prag_core.corpus import read_corpus
from prag_core.pairs.doc_params import DocParams
from prag_core.retrieval.bm25 import BM25Index
from prag_core.storage.store import Store

pytestmark = pytest.mark.usefixtures("one_thread")
DOCS = [
    {"id": "kite", "title": "Kite", "text": "Tom has a red kite. It flies over Leeds."},
    {"id": "bell", "text": "The bell rings at 9. Ana rings it."},
    {"id": "figs", "text": "Bo eats 3 figs. Figs are sweet in May."},
    {"id": "dog", "text": "Kai's dog is Rex. Rex barks at Lulu."},
    {"id": "owl", "text": "Mira keeps 7 owls. They sleep in the barn."},
]
FAST = ["--epochs", "1", "--batch-docs", "2", "--augmenter", "fallback", "--warmup", "none"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_model")
    tiny_llama().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def _corpus(path, docs=DOCS, raw=None):
    path.write_text(raw if raw is not None else "".join(json.dumps(d) + "\n" for d in docs))
    return path


def _build(corpus, workdir, model_dir, *extra):
    return main(["build", "--corpus", str(corpus), "--workdir", str(workdir), "--model", str(model_dir), *FAST, *extra])


def _error(err):
    """The one-line error at the end of stderr (model loading may print progress before it)."""
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def _tensors(workdir):
    """id -> {tensor name: tensor} of every document in the store."""
    out = {}
    for row in Store(workdir / "store").rows():
        doc = DocParams.load(workdir / "store" / row.file)  # a document file: DocParams' format
        doc_id = row.id
        # copies: loaded tensors may share the file's memory map, and a test below overwrites a file in place
        out[doc_id] = {f"{p}.{s}": t.clone() for p, pair in doc.pairs.items() for s, t in zip(("a", "b"), pair)}
    return out


def _file(workdir, doc_id):
    return next(row.file for row in Store(workdir / "store").rows() if row.id == doc_id)


def test_build_outputs_and_rerun(tmp_path, model_dir, capsys):
    long_doc = {"id": "long", "text": "word " * 300}
    corpus = _corpus(tmp_path / "corpus.jsonl", DOCS + [long_doc])
    work = tmp_path / "W"
    assert _build(corpus, work, model_dir) == 0
    out, err = capsys.readouterr()
    assert "built 6 documents (6 encoded now, 0 already in the store; 6 with fallback augmentation)" in out
    assert "s per document" in out and "MiB on disk" in out
    assert f"prag: warning: {corpus}:6: document 'long' has 1500 tokens" in err and "truncated" in err
    config = json.loads((work / "config.json").read_text())
    assert config["model"] == str(model_dir) and config["rank"] == 2 and config["alpha"] == 16.0
    assert config["epochs"] == 1 and config["augmenter"] == "fallback"
    built = read_corpus(work / "corpus.jsonl")
    assert [d.id for d in built] == [d["id"] for d in DOCS] + ["long"] and built[0].title == "Kite"
    assert len(built[-1].text) < len(long_doc["text"]) and built[0].text == DOCS[0]["text"]
    assert BM25Index.load(work / "index.safetensors").search("red kite Leeds", k=1)[0][0] == "kite"
    rows = [json.loads(line) for line in (work / "augment.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["source"] == "fallback" for r in rows)
    assert [len(r["qa"]) for r in rows] == [3, 3, 3, 3, 3, 1]  # "word word ...": one distinct cloze
    first = _tensors(work)
    assert set(first) == {d["id"] for d in DOCS} | {"long"}

    assert _build(corpus, work, model_dir) == 0  # nothing to do
    assert "0 encoded now, 6 already in the store" in capsys.readouterr().out

    long_file = work / "store" / _file(work, "long")
    changed = [dict(DOCS[0], text="Tom has a blue kite. It flies over York.")] + DOCS[1:]
    _corpus(corpus, changed)  # one text changed, "long" left the corpus
    owl = work / "store" / _file(work, "owl")
    owl.write_bytes(b"\0" * 100)  # and one file corrupted
    assert _build(corpus, work, model_dir) == 0
    out, err = capsys.readouterr()
    assert "built 5 documents (2 encoded now, 3 already in the store" in out
    assert f"{owl}: bytes do not match: corrupted; re-encoding document 'owl'" in err
    again = _tensors(work)
    assert set(again) == {d["id"] for d in DOCS} and not long_file.exists()
    for doc_id in ("bell", "figs", "dog", "owl"):  # owl redone from the same text: the same pairs
        for name, t in first[doc_id].items():
            torch.testing.assert_close(again[doc_id][name], t, rtol=1e-4, atol=1e-7)
    assert any(not torch.allclose(again["kite"][n], t) for n, t in first["kite"].items())  # retrained


def _build_killed_after(n, *args):
    """`prag build ARGS` in a subprocess that dies (os._exit(17), as under SIGKILL) right after its n-th
    document was stored, before the store's flush."""
    code = (
        "import os, sys\n"
        "from prag_core.storage.store import Store\n"
        "put, stored = Store.put, []\n"
        "def put_then_die(self, doc, params):\n"
        "    put(self, doc, params)\n"
        "    stored.append(doc.id)\n"
        "    if len(stored) == int(sys.argv[1]):\n"
        "        os._exit(17)\n"
        "Store.put = put_then_die\n"
        "from prag_core.cli import main\n"
        "sys.exit(main(sys.argv[2:]))"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(n), "build", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )


@pytest.mark.slow
def test_killed_build_resumes_to_the_same_store(tmp_path, model_dir):
    """The process dies (os._exit, as under SIGKILL) right after the 3rd document was stored, in the middle of
    a batch; re-running finishes, and the store equals an uninterrupted build's."""
    corpus = _corpus(tmp_path / "corpus.jsonl", DOCS[:4])
    killed = tmp_path / "killed"
    proc = _build_killed_after(3, "--corpus", str(corpus), "--workdir", str(killed), "--model", str(model_dir), *FAST)
    assert proc.returncode == 17, proc.stderr[-2000:]
    assert len(list((killed / "store").glob("*.safetensors"))) == 3 and len(Store(killed / "store")) == 3
    assert _build(corpus, killed, model_dir) == 0
    assert _build(corpus, tmp_path / "clean", model_dir) == 0
    resumed, clean = _tensors(killed), _tensors(tmp_path / "clean")
    assert set(resumed) == set(clean) == {d["id"] for d in DOCS[:4]}
    for doc_id, tensors in clean.items():
        for name, t in tensors.items():
            torch.testing.assert_close(resumed[doc_id][name], t, rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_model_augmenter_on_tiny_model_records_fallback(tmp_path, model_dir):
    corpus = _corpus(tmp_path / "corpus.jsonl", DOCS[:1])
    writer = tmp_path / "writer_model"  # another model writes the augmentations
    tiny_llama(seed=2).save_pretrained(writer)
    tiny_tokenizer().save_pretrained(writer)
    for workdir, extra in (("W", []), ("W2", ["--augment-model", str(writer)])):
        assert (
            main(
                [
                    "build",
                    "--corpus",
                    str(corpus),
                    "--workdir",
                    str(tmp_path / workdir),
                    "--model",
                    str(model_dir),
                    "--epochs",
                    "1",
                    "--n-qa",
                    "2",
                    "--warmup",
                    "none",
                    "--augmenter",
                    "model",
                    *extra,
                ]
            )
            == 0
        )
    rows = [json.loads(line) for line in (tmp_path / "W" / "augment.jsonl").read_text().splitlines()]
    assert [(r["source"], r["attempts"], len(r["qa"])) for r in rows] == [("fallback", 3, 2)]
    assert rows[0]["settings"]["generator"] == f"LlamaForCausalLM:{model_dir}"
    rows = [json.loads(line) for line in (tmp_path / "W2" / "augment.jsonl").read_text().splitlines()]
    assert rows[0]["settings"]["generator"] == f"LlamaForCausalLM:{writer}"
    assert json.loads((tmp_path / "W2" / "config.json").read_text())["augment_model"] == str(writer)


@pytest.mark.parametrize(
    "raw, message",
    [
        (None, "no such file"),
        ('{"id": "a", "text": "ok"}\n{"id": "b", "text": \n', r"corpus.jsonl:2: malformed JSON"),
        ('{"id": "a", "text": "ok"}\n{"id": "a", "text": "again"}\n', r"corpus.jsonl:2: duplicate id 'a'"),
        ('{"id": "a", "text": "  "}\n', r"corpus.jsonl:1: field 'text' is empty"),
        ('{"id": "a"}\n', r"corpus.jsonl:1: missing field 'text'"),
        ("", "no records"),
    ],
)
def test_bad_corpus(tmp_path, model_dir, capsys, raw, message):
    corpus = tmp_path / "corpus.jsonl"
    if raw is not None:
        corpus.write_text(raw)
    assert _build(corpus, tmp_path / "W", model_dir) == 2
    err = _error(capsys.readouterr().err)
    assert err.startswith("prag: error: ") and re.search(message, err)
    assert not (tmp_path / "W").exists()


def test_bad_model_and_settings(tmp_path, model_dir, capsys):
    corpus = _corpus(tmp_path / "corpus.jsonl", DOCS[:1])
    work = tmp_path / "W"
    not_a_model = tmp_path / "folder"
    not_a_model.mkdir()
    cases = [
        (["--model", str(tmp_path / "nope")], "nope: no such model folder"),
        (["--model", str(not_a_model)], "folder: no config.json in the folder"),
        (["--model", str(corpus)], "corpus.jsonl: not a folder"),
        (["--targets", "q_proj"], "targets"),
        (["--n-rewrites", "-1"], "n_rewrites"),
        (["--lr", "0"], "lr must be a finite number > 0"),
        (["--lr", "inf"], "lr must be a finite number > 0"),
        (["--dtype", "float16"], "dtype float16 cannot train"),
        (["--device", "bogus"], "--device 'bogus': not a device torch knows"),
        (["--device", "cuda:99"], "--device cuda:99: "),
        (["--workdir", str(corpus)], "corpus.jsonl: a file, not a work directory"),
    ]
    for extra, message in cases:
        assert (
            main(["build", "--corpus", str(corpus), "--workdir", str(work), "--model", str(model_dir), *FAST, *extra])
            == 2
        )
        err = _error(capsys.readouterr().err)
        assert err.startswith("prag: error: ") and message in err
        assert not work.exists()


def _store_contents(workdir):
    """The store's payload files' bytes and its catalog's rows (SQLite may rewrite the catalog's bytes)."""
    files = {p.name: p.read_bytes() for p in sorted((workdir / "store").iterdir()) if "catalog" not in p.name}
    return files, Store(workdir / "store").rows()


def test_store_of_another_model_is_refused_and_kept(tmp_path, model_dir, capsys):
    corpus = _corpus(tmp_path / "corpus.jsonl", DOCS[:2])
    work = tmp_path / "W"
    assert _build(corpus, work, model_dir) == 0
    before = _store_contents(work)
    config_before = (work / "config.json").read_text()
    other = tmp_path / "other_model"
    tiny_llama(seed=1).save_pretrained(other)
    tiny_tokenizer().save_pretrained(other)
    capsys.readouterr()
    assert _build(corpus, work, other) == 2
    assert _error(capsys.readouterr().err).startswith(f"prag: error: {work / 'store'}: built for another model")
    assert _store_contents(work) == before
    assert (work / "config.json").read_text() == config_before
    assert Path(json.loads(config_before)["model"]) == model_dir


def _tag(work):
    return {doc.meta["training"]["rank"] for doc in Store(work / "store").values()}


@pytest.mark.slow
def test_other_settings_are_refused_and_a_killed_retrain_is_never_served_mixed(tmp_path, model_dir, capsys):
    """A rebuild with another --rank (or augmenter) would re-encode everything: refused, store untouched,
    unless --retrain; a --retrain killed midway leaves a store `prag ask` refuses in one line, and re-running
    the same build finishes it."""
    corpus = _corpus(tmp_path / "corpus.jsonl", DOCS[:4])
    work = tmp_path / "W"
    assert _build(corpus, work, model_dir) == 0
    before = _store_contents(work)
    capsys.readouterr()
    for extra, said in [
        (["--rank", "4"], "rank 2 → 4"),
        (["--n-qa", "2"], "n_qa 3 → 2"),
        (["--augmenter", "model"], "augmenter 'fallback' → 'model'"),
    ]:
        assert _build(corpus, work, model_dir, *extra) == 2
        err = _error(capsys.readouterr().err)
        assert said in err and "--retrain" in err and "4 stored documents" in err
    assert _store_contents(work) == before
    proc = _build_killed_after(
        2, "--corpus", str(corpus), "--workdir", str(work), "--model", str(model_dir), *FAST, "--rank", "4", "--retrain"
    )
    assert proc.returncode == 17, proc.stderr[-2000:]
    assert _tag(work) == {2, 4}  # mixed on disk...
    asks = [main(["ask", "--workdir", str(work), "--top-k", "4", "Who has a red kite?"])]
    err = _error(capsys.readouterr().err)
    assert asks == [2] and "trained with other settings than the work directory's config.json" in err  # ...never served
    assert _build(corpus, work, model_dir, "--rank", "4") == 0  # the same build again finishes it
    assert _tag(work) == {4}
    assert main(["ask", "--workdir", str(work), "--top-k", "4", "Who has a red kite?"]) == 0


def test_diverging_training_stops_naming_the_document(tmp_path, model_dir, capsys):
    corpus = _corpus(tmp_path / "corpus.jsonl", DOCS[:2])
    assert _build(corpus, tmp_path / "W", model_dir, "--lr", "1e30") == 2
    err = _error(capsys.readouterr().err)
    assert re.search(r"corpus.jsonl:1: document 'kite' diverged \(loss is nan at epoch 1, step \d\)", err), err
    assert not list((tmp_path / "W" / "store").glob("*.safetensors"))


def test_rank_above_a_layer_width_warns(tmp_path, model_dir, capsys):
    corpus = _corpus(tmp_path / "corpus.jsonl", DOCS[:1])
    assert _build(corpus, tmp_path / "W", model_dir, "--rank", "40") == 0
    assert "--rank 40 is more than the narrowest target layer's width 32" in capsys.readouterr().err


def test_unwritable_workdir_is_one_line(tmp_path, model_dir, capsys):
    corpus = _corpus(tmp_path / "corpus.jsonl", DOCS[:1])
    assert _build(corpus, corpus / "W", model_dir) == 2  # a folder under a file: NotADirectoryError
    err = _error(capsys.readouterr().err)
    assert err.startswith(f"prag: error: {corpus}") and "Not a directory" in err

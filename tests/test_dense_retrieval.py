"""Dense and hybrid retrieval on a tiny random BERT embedder: exact search, save/load, reuse of unchanged
embeddings, RRF, the stale/foreign index errors, the shipped embedder's extraction, and the CLI flow."""

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tiny import save_tiny_llama, tiny_embedder

import prag_core.retrieval.dense as dense
from prag_core.cli import main
from prag_core.corpus import Document, corpus_sha256, text_sha256
from prag_core.retrieval.bm25 import BM25Index, RetrievalError, indexed_text
from prag_core.retrieval.dense import DenseIndex, embedder_id, load_embedder
from prag_core.retrieval.retrievers import HybridIndex, rrf
from prag_core.storage.workdir import Workdir

pytestmark = pytest.mark.usefixtures("one_thread")


def _doc(doc_id, text, title=None):
    return Document(doc_id, text, title, text_sha256(text))


DOCS = [
    _doc("kite", "Tom has a red kite. It flies over Leeds.", "Kite"),
    _doc("bell", "The bell rings at 9. Ana rings it."),
    _doc("figs", "Bo eats 3 figs. Figs are sweet in May."),
    _doc("dog", "Kai's dog is Rex. Rex barks at Lulu."),
    _doc("owl", "Mira keeps 7 owls. They sleep in the barn."),
]
QUERIES = ["What color is Tom's kite?", "When does the bell ring?", "owls in the barn", "Rex"]


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    """(model, id) of a tiny random sentence-transformers folder."""
    words = re.findall(r"[a-z0-9]+", " ".join(indexed_text(d) for d in DOCS).lower())
    return load_embedder(str(tiny_embedder(tmp_path_factory.mktemp("embedder"), words)))


@pytest.fixture(scope="module")
def index(embedder):
    return DenseIndex.build(DOCS, *embedder)


def test_exact_search_equals_brute_force(index, embedder):
    model = embedder[0]
    one_by_one = np.stack([model.encode([indexed_text(d)], normalize_embeddings=True)[0] for d in DOCS])
    assert index.embeddings.numpy() == pytest.approx(one_by_one, abs=1e-5)  # title + text, as BM25 indexes
    for query in QUERIES:
        scores = index.embeddings.numpy().astype(np.float64) @ model.encode([query], normalize_embeddings=True)[0]
        order = np.argsort(-scores, kind="stable")
        got = index.search(query, k=len(DOCS))
        assert [doc_id for doc_id, _ in got] == [DOCS[i].id for i in order]
        assert [s for _, s in got] == pytest.approx(scores[order].tolist(), abs=1e-6)
    assert len(index.search(QUERIES[0], k=2)) == 2 and len(index.search(QUERIES[0], k=50)) == len(DOCS)
    with pytest.raises(RetrievalError, match="k must be at least 1"):
        index.search("kite", k=0)
    with pytest.raises(RetrievalError, match="empty query"):
        index.search("  ")


def test_save_load_round_trip(index, embedder, tmp_path):
    path = tmp_path / "dense.safetensors"
    index.save(path)
    loaded = DenseIndex.load(path, embedder[1])
    assert loaded.ids == index.ids and loaded.keys == index.keys and loaded.embedder == embedder[1]
    assert loaded.corpus_sha256 == corpus_sha256(DOCS) and torch.equal(loaded.embeddings, index.embeddings)
    loaded.model = embedder[0]
    for query in QUERIES:
        assert loaded.search(query, k=len(DOCS)) == index.search(query, k=len(DOCS))


def _resave(index, path, meta=None, tensor=None):
    index.save(path)
    header = {
        "format": "prag-dense",
        "version": "1",
        "embedder": index.embedder,
        "corpus_sha256": index.corpus_sha256,
        "ids": json.dumps(index.ids),
        "keys": json.dumps(index.keys),
        **(meta or {}),
    }
    save_file(
        {"embeddings": index.embeddings if tensor is None else tensor},
        str(path),
        metadata={k: v for k, v in header.items() if v is not None},
    )


@pytest.mark.parametrize(
    "meta, tensor, expected",
    [
        ({"format": "prag-bm25"}, None, r"not a prag dense index \(field 'format'"),
        ({"version": "0"}, None, r"field 'version' is '0', this prag reads '1'; run .prag build. again"),
        ({"embedder": "someone-else"}, None, r"built with embedder 'someone-else', not .*; run .prag build. again"),
        ({"keys": None}, None, r"header field 'keys' is missing or malformed"),
        (None, torch.ones(5, 16), r"tensor 'embeddings' has rows that are not unit vectors"),
        (None, torch.ones(4, 16) / 4, r"tensor 'embeddings' is torch.float32\[4, 16\], expected float32 \[5, dim\]"),
        (None, torch.ones(5, 16, dtype=torch.float64) / 4, r"tensor 'embeddings' is torch.float64"),
    ],
)
def test_load_rejects_bad_and_foreign_files(index, embedder, tmp_path, meta, tensor, expected):
    path = tmp_path / "dense.safetensors"
    _resave(index, path, meta, tensor)
    with pytest.raises(RetrievalError, match=r"dense\.safetensors: " + expected):
        DenseIndex.load(path, embedder[1])


def test_unreadable_or_missing_file(tmp_path):
    (tmp_path / "cut.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(RetrievalError, match=r"cut\.safetensors: unreadable dense index"):
        DenseIndex.load(tmp_path / "cut.safetensors")
    with pytest.raises(RetrievalError, match=r"nope\.safetensors: no such dense index file"):
        DenseIndex.load(tmp_path / "nope.safetensors")


def test_rebuild_embeds_only_new_or_changed_documents(embedder, tmp_path, monkeypatch):
    embedded = []
    real = dense.embed
    monkeypatch.setattr(
        dense,
        "embed",
        lambda model, texts, progress=False: embedded.append(list(texts)) or real(model, texts, progress),
    )
    Workdir(tmp_path).write_indexes(DOCS, "dense", embedder)
    first = DenseIndex.load(Workdir(tmp_path).dense_index)
    changed = [DOCS[0], _doc("bell", "The bell rings at noon."), *DOCS[2:], _doc("new", "A new owl arrives.")]
    Workdir(tmp_path).write_indexes(changed, "dense", embedder)
    second = DenseIndex.load(Workdir(tmp_path).dense_index)
    assert embedded == [[indexed_text(d) for d in DOCS], ["The bell rings at noon.", "A new owl arrives."]]
    assert second.ids == [d.id for d in changed] and second.corpus_sha256 == corpus_sha256(changed)
    same = [0, 2, 3, 4]
    assert torch.equal(second.embeddings[same], first.embeddings[same])  # reused bit for bit
    assert not torch.equal(second.embeddings[1], first.embeddings[1])
    Workdir(tmp_path).write_indexes(changed, "dense", embedder)  # nothing changed: nothing embedded
    assert len(embedded) == 2


def test_rrf_on_known_rankings():
    fused = rrf([["a", "b", "c"], ["c", "a", "d"]], k=4)
    assert fused == [("a", 1 / 61 + 1 / 62), ("c", 1 / 63 + 1 / 61), ("b", 1 / 62), ("d", 1 / 63)]
    assert rrf([["x", "y"], ["y", "x"]], k=2) == [("x", 1 / 61 + 1 / 62), ("y", 1 / 62 + 1 / 61)]  # tie: first seen
    assert rrf([["a", "b"], ["b"]], k=1, rrf_k=0) == [("b", 1 / 2 + 1)]


def test_hybrid_fuses_bm25_matches_with_the_dense_ranking(index):
    bm25 = BM25Index.build(DOCS)
    hybrid = HybridIndex(bm25, index)
    for query in ["Rex barks", "red kite", "figs in May"]:
        lexical = [d for d, s in bm25.search(query, k=len(DOCS)) if s > 0]  # documents with no shared word left out
        semantic = [d for d, _ in index.search(query, k=len(DOCS))]
        assert 0 < len(lexical) < len(DOCS)
        assert hybrid.search(query, k=3) == rrf([lexical, semantic], k=3)
    with pytest.raises(RetrievalError, match="k must be at least 1"):
        hybrid.search("kite", k=0)


def test_open_retriever_checks_corpus_and_files(embedder, tmp_path):
    Workdir(tmp_path).write_indexes(DOCS, "hybrid", embedder)
    good = corpus_sha256(DOCS)
    assert isinstance(Workdir(tmp_path).open_retriever("hybrid", good, embedder[1]), HybridIndex)
    assert Workdir(tmp_path).open_retriever("dense", good).search("red kite", k=1)[0][0] in {d.id for d in DOCS}
    with pytest.raises(RetrievalError, match=r"dense\.safetensors was built from another corpus than corpus\.jsonl"):
        Workdir(tmp_path).open_retriever("dense", corpus_sha256(DOCS[:2]))
    with pytest.raises(RetrievalError, match=r"index\.safetensors was built from another corpus"):
        Workdir(tmp_path).open_retriever("hybrid", corpus_sha256(DOCS[:2]))
    with pytest.raises(RetrievalError, match=r"built with embedder .*, not 'all-MiniLM-L6-v2'"):
        Workdir(tmp_path).open_retriever("dense", good, "minilm")
    with pytest.raises(RetrievalError, match="retriever: unknown 'sparse'; choose from bm25, dense, hybrid"):
        Workdir(tmp_path).open_retriever("sparse", good)
    (Workdir(tmp_path).dense_index).unlink()
    with pytest.raises(
        RetrievalError,
        match=r"dense\.safetensors: no dense index; build it with "
        r"`prag build --retriever hybrid`",
    ):
        Workdir(tmp_path).open_retriever("hybrid", good)


def test_shipped_embedder_is_extracted_once_from_the_package_zip(embedder, tmp_path, monkeypatch):
    folder = Path(embedder[1])
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            z.write(path, path.relative_to(folder))
    monkeypatch.setenv("PRAG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(dense, "package_file", lambda package, name, pip_name: archive)
    model, ident = load_embedder()  # the default: "minilm"
    assert ident == embedder_id("minilm") == "all-MiniLM-L6-v2"
    assert (tmp_path / "cache" / "all-MiniLM-L6-v2" / "model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["all-MiniLM-L6-v2"]  # no temporary folder left
    assert torch.allclose(dense.embed(model, QUERIES), dense.embed(embedder[0], QUERIES))
    archive.unlink()  # extracted already: the zip is not read again
    monkeypatch.setattr(dense, "package_file", lambda package, name, pip_name: tmp_path / "gone.zip")
    assert load_embedder("minilm")[1] == "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("model"))


def test_cli_build_refuses_an_embedder_that_does_not_load(model, tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"id": "kite", "text": DOCS[0].text}) + "\n")
    assert (
        main(
            [
                "build",
                "--corpus",
                str(corpus),
                "--workdir",
                str(tmp_path / "W"),
                "--model",
                str(model),
                "--retriever",
                "dense",
                "--embedder",
                str(tmp_path / "nope"),
            ]
        )
        == 2
    )
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"prag: error: embedder '{tmp_path / 'nope'}': cannot load it as a sentence-transformers model "
        f"(Path {tmp_path / 'nope'} not found)"
    )
    assert not (tmp_path / "W").exists()  # refused before anything was written


def test_cli_build_records_the_retriever_and_ask_eval_use_or_override_it(model, embedder, tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"id": d.id, "text": d.text, **({"title": d.title} if d.title else {})}) + "\n" for d in DOCS
        )
    )
    work = tmp_path / "W"
    assert (
        main(
            [
                "build",
                "--corpus",
                str(corpus),
                "--workdir",
                str(work),
                "--model",
                str(model),
                "--epochs",
                "1",
                "--batch-docs",
                "5",
                "--augmenter",
                "fallback",
                "--warmup",
                "none",
                "--retriever",
                "hybrid",
                "--embedder",
                embedder[1],
            ]
        )
        == 0
    )
    config = json.loads((work / "config.json").read_text())
    assert config["retriever"] == "hybrid" and config["embedder"] == embedder[1]
    assert DenseIndex.load(Workdir(work).dense_index, embedder[1]).ids == [d.id for d in DOCS]
    capsys.readouterr()
    for retriever in ("hybrid", "bm25", "dense"):
        argv = ["ask", "--workdir", str(work), "What color is Tom's kite?"]
        assert main(argv if retriever == "hybrid" else [*argv[:3], "--retriever", retriever, argv[3]]) == 0
        documents = capsys.readouterr().out.splitlines()[-2]
        assert documents.startswith("documents: ") and len(documents.split(", ")) == 3
    qa = tmp_path / "qa.jsonl"
    qa.write_text(
        json.dumps({"id": "q1", "question": "What color is Tom's kite?", "answers": ["red"], "docs": ["kite"]}) + "\n"
    )
    out = tmp_path / "results.json"
    assert (
        main(
            [
                "eval",
                "--workdir",
                str(work),
                "--questions",
                str(qa),
                "--modes",
                "prag",
                "--retriever",
                "bm25",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "retrieval (bm25): recall@1 1.000  recall@3 1.000  recall@5 1.000" in capsys.readouterr().out
    assert json.loads(out.read_text())["retrieval"] == {
        "retriever": "bm25",
        "recall@1": 1.0,
        "recall@3": 1.0,
        "recall@5": 1.0,
    }
    (Workdir(work).dense_index).unlink()
    assert main(["ask", "--workdir", str(work), "kite"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"prag: error: {Workdir(work).dense_index}: no dense index; build it with `prag build --retriever hybrid`"
    )


def test_above_the_exact_limit_search_is_an_ivf_index_close_to_exact_and_saved(embedder, tmp_path, monkeypatch):
    monkeypatch.setattr(dense, "EXACT_MAX", 100)
    monkeypatch.setattr(dense, "NPROBE", 16)  # of 98 lists: approximate, as 128 of 4000 are at 1M
    rng = np.random.default_rng(0)
    words = sorted(set(re.findall(r"[a-z0-9]+", " ".join(indexed_text(d) for d in DOCS).lower())))
    docs = [_doc(f"d{i}", " ".join(rng.choice(words, 6))) for i in range(600)]
    index = DenseIndex.build(docs, *embedder)
    assert index._search_index.nlist == 4 * round(600**0.5) and index._search_index.nprobe == dense.NPROBE
    queries = [" ".join(rng.choice(words, 3)) for _ in range(20)]
    recall = []
    for query in queries:
        exact = index.embeddings.numpy() @ dense.embed(embedder[0], [query])[0].numpy()
        truth = {docs[i].id for i in np.argsort(-exact)[:10]}
        got = index.search(query, k=10)
        assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)
        recall.append(len(truth & {d for d, _ in got}) / 10)
    assert np.mean(recall) >= 0.9
    path = tmp_path / "dense.safetensors"
    index.save(path)
    loaded = DenseIndex.load(path, embedder[1])
    loaded.model = embedder[0]
    assert all(loaded.search(q, k=10) == index.search(q, k=10) for q in queries)  # the saved lists, not retrained
    _resave(index, path, tensor=index.embeddings)  # the IVF left out: an index from before FAISS is trained again
    assert DenseIndex.load(path)._search_index.ntotal == 600
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    save_file({"embeddings": index.embeddings, "ivf": torch.zeros(9, dtype=torch.uint8)}, str(path), metadata=meta)
    with pytest.raises(RetrievalError, match=r"dense\.safetensors: tensor 'ivf' is not a FAISS index"):
        DenseIndex.load(path)

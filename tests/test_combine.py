"""Combining a question's k documents (sum, mean, score, dyprag): the weights, fused == merge, per-row batches,
the pipeline's answers; and the B inits (shared, document, orthogonal)."""

import math
from dataclasses import replace

import pytest
import torch
from test_pipeline import QUESTIONS, make_pipe, predictions
from tiny import random_doc_params, tiny_llama

from prag_core.answer.config import AnswerConfig
from prag_core.answer.pipeline import Pipeline
from prag_core.answer.requests import PipelineError
from prag_core.model.inject import inject, merged_documents, use_documents
from prag_core.pairs.combine import combine, softmax_weights
from prag_core.pairs.doc_params import DocParams

pytestmark = pytest.mark.usefixtures("one_thread")
SETTINGS = [("sum", 1.0), ("mean", 1.0), ("score", 0.5), ("score", 5.0), ("dyprag", 1.0)]


def rel(y, ref):
    return ((y - ref).norm() / ref.norm()).item()


@pytest.fixture(scope="module")
def model():
    return inject(tiny_llama(seed=2).double())


@pytest.fixture(scope="module")
def docs(model):
    return [d.to(dtype=torch.float64) for d in random_doc_params(model, 3, seed=5, std=0.2)]


@torch.no_grad()
def logits(model, ids):
    return model(ids).logits


def ids(batch=1, seed=0):
    return torch.randint(3, 250, (batch, 9), generator=torch.Generator().manual_seed(seed))


def scaled(doc, w):
    """The document with A times w: α·(w A) Bᵀ = w·α·A Bᵀ."""
    return DocParams({p: (a * w, b) for p, (a, b) in doc.pairs.items()}, doc.alpha, doc.meta)


def test_weights_of_each_scheme(docs):
    scores = [9.0, 7.5, 2.0]
    assert combine(docs, scores, "sum") == (docs, [1.0, 1.0, 1.0])
    assert combine(docs, scores, "mean") == (docs, [1 / 3] * 3)
    out, w = combine(docs, scores, "score", temperature=2.0)
    expected = [math.exp(s / 2) / sum(math.exp(t / 2) for t in scores) for s in scores]
    assert out == docs and w == pytest.approx(expected) and sum(w) == pytest.approx(1.0)
    assert combine(docs, scores, "score", temperature=1e-3)[1] == pytest.approx([1, 0, 0])  # T -> 0: the top one
    assert combine(docs, scores, "score", temperature=1e6)[1] == pytest.approx([1 / 3] * 3, rel=1e-4)  # T -> ∞: mean
    assert softmax_weights([1000.0, 999.0], 1.0) == pytest.approx([1 / (1 + math.e**-1), 1 / (1 + math.e)])
    (avg,), w = combine(docs, scores, "dyprag")
    assert w == [1.0] and avg.alpha == docs[0].alpha
    for path, (a, b) in avg.pairs.items():
        assert torch.allclose(a, sum(d.pairs[path][0] for d in docs) / 3)
        assert torch.allclose(b, sum(d.pairs[path][1] for d in docs) / 3)
    assert combine(docs[:1], [3.0], "dyprag") == (docs[:1], [1.0]) and combine([], [], "mean") == ([], [])


@pytest.mark.parametrize(
    "scheme, temperature, message",
    [
        ("median", 1.0, "combination: unknown 'median'"),
        ("score", 0.0, "temperature"),
        ("score", -1.0, "temperature"),
        ("score", float("nan"), "temperature"),
    ],
)
def test_bad_scheme_or_temperature(docs, scheme, temperature, message):
    with pytest.raises(ValueError, match=message):
        combine(docs, [1.0, 2.0, 3.0], scheme, temperature)


def test_weights_scale_each_document_as_documented(model, docs):
    """use_documents(weights=w) == the documents with A_j scaled by w_j, fused and merged; w = 1 changes nothing."""
    w = [0.7, -0.2, 1.9]
    expected = logits_with(model, [scaled(d, x) for d, x in zip(docs, w)])
    with use_documents(model, docs, weights=w):
        fused = logits(model, ids())
    with merged_documents(model, docs, weights=w):
        merged = logits(model, ids())
    assert rel(fused, expected) < 1e-10 and rel(merged, expected) < 1e-10
    assert rel(fused, logits_with(model, docs)) > 1e-3  # the weights matter
    with use_documents(model, docs, weights=[1.0, 1.0, 1.0]):
        assert torch.equal(logits(model, ids()), logits_with(model, docs))


def logits_with(model, docs):
    with use_documents(model, docs):
        return logits(model, ids())


@pytest.mark.parametrize("scheme, temperature", SETTINGS)
def test_fused_equals_merge_for_every_scheme(model, docs, scheme, temperature):
    chosen, w = combine(docs, [4.0, 3.0, 1.0], scheme, temperature)
    with use_documents(model, chosen, weights=w):
        fused = logits(model, ids())
    with merged_documents(model, chosen, weights=w):
        merged = logits(model, ids())
    assert rel(fused, merged) < 1e-10
    assert rel(fused, logits(model, ids())) > 1e-4  # the documents matter


def test_per_row_mixed_schemes_equal_each_row_alone(model, docs):
    """One batch whose rows use different documents under different schemes == each row answered alone."""
    d0, d1, d2 = docs
    rows = [
        combine([d0, d1, d2], [5.0, 4.0, 1.0], "score", 1.0),
        combine([d2, d0], [3.0, 2.5], "mean"),
        combine([d1, d2, d0], [2.0, 1.0, 0.5], "dyprag"),
        ([], []),
        combine([d1], [1.0], "sum"),
        ([d0, d0], [0.25, 0.5]),
    ]  # a document twice in one row: its weights add
    batch = ids(batch=len(rows), seed=4)
    with use_documents(model, [r[0] for r in rows], weights=[r[1] for r in rows]):
        together = logits(model, batch)
    for i, (chosen, w) in enumerate(rows):
        with use_documents(model, chosen, weights=w):
            alone = logits(model, batch[i : i + 1])
        assert rel(together[i], alone[0]) < 1e-10, i
    # the empty row is exactly the base model on the same batch (a batch of one may take another BLAS blocking)
    assert torch.equal(together[3], logits(model, batch)[3])
    assert rel(together[5], logits_with_row(model, [scaled(d0, 0.75)], batch[5:6])) < 1e-10


def logits_with_row(model, docs, batch):
    with use_documents(model, docs):
        return logits(model, batch)[0]


def test_weights_must_be_nested_like_docs(model, docs):
    with pytest.raises(ValueError, match="nested like docs"):
        with use_documents(model, docs, weights=[1.0]):
            pass
    with pytest.raises(ValueError, match="nested like docs"):
        with use_documents(model, [[docs[0]], [docs[1]]], weights=[1.0, 1.0]):
            pass


@pytest.mark.parametrize("scheme, temperature", SETTINGS)
def test_pipeline_fused_and_merge_answer_alike_for_every_scheme(pipe, scheme, temperature):
    p = Pipeline(pipe.kb, AnswerConfig(top_k=3, max_new_tokens=10, combination=scheme, temperature=temperature))
    fused = p.answer(QUESTIONS, "prag", "fused")  # one batch, per-row documents and weights
    assert predictions(fused) == predictions(p.answer(QUESTIONS, "prag", "merge"))
    assert predictions(fused) == predictions([p.answer([q], "prag")[0] for q in QUESTIONS])
    assert all(len(a.docs) == 3 and len(a.scores) == 3 and a.scores == sorted(a.scores, reverse=True) for a in fused)


def test_pipeline_schemes_differ_and_bad_ones_are_refused(pipe):
    answers = {
        s: predictions(
            Pipeline(pipe.kb, AnswerConfig(top_k=3, max_new_tokens=10, combination=s)).answer(QUESTIONS, "prag")
        )
        for s in ("sum", "mean")
    }
    assert answers["sum"] != answers["mean"]
    with pytest.raises(PipelineError, match="combination: unknown 'max'"):
        Pipeline(pipe.kb, AnswerConfig(combination="max"))
    with pytest.raises(PipelineError, match="temperature"):
        Pipeline(pipe.kb, AnswerConfig(temperature=0))


class _Scaled:
    """A retriever with BM25's results and another score scale (as dense and hybrid have)."""

    name, score_scale = "scaled", 0.05

    def __init__(self, index):
        self.index = index

    def search(self, query, k):
        return self.index.search(query, k)


def test_score_temperature_is_in_the_retriever_score_scale(pipe):
    def answers(index, temperature):
        return predictions(
            Pipeline(
                replace(pipe.kb, index=index),
                AnswerConfig(top_k=3, max_new_tokens=10, combination="score", temperature=temperature),
            ).answer(QUESTIONS, "prag")
        )

    sharp = answers(pipe.kb.index, 0.05)
    assert answers(_Scaled(pipe.kb.index), 1.0) == sharp != answers(pipe.kb.index, 1.0)


def test_b_inits():
    model = inject(tiny_llama(seed=0))
    shared = [DocParams.init(model, 2, 16.0, init="shared", doc_key=k) for k in ("a", "b")]
    own = [DocParams.init(model, 2, 16.0, init="document", doc_key=k) for k in ("a", "b", "a")]
    ortho = [DocParams.init(model, 2, 16.0, init="orthogonal", doc_key=k) for k in ("a", "b", "a")]
    default = DocParams.init(model, 2, 16.0)
    for path, (a, b) in default.pairs.items():
        inp = b.shape[0]
        assert torch.equal(a, torch.zeros_like(a))
        assert torch.equal(shared[0].pairs[path][1], b) and torch.equal(shared[1].pairs[path][1], b)
        assert not torch.equal(own[0].pairs[path][1], own[1].pairs[path][1])
        assert torch.equal(own[0].pairs[path][1], own[2].pairs[path][1])  # seeded by the key: reproducible
        assert own[0].pairs[path][1].abs().max() <= 1 / math.sqrt(inp)  # the same uniform distribution
        ob = ortho[0].pairs[path][1]
        assert torch.allclose(ob.T @ ob, torch.eye(2) / 3, atol=1e-6)  # orthonormal columns, times 1/√3
        assert not torch.equal(ob, ortho[1].pairs[path][1]) and torch.equal(ob, ortho[2].pairs[path][1])
    with pytest.raises(ValueError, match="init: unknown 'zero'"):
        DocParams.init(model, 2, 16.0, init="zero")


@pytest.fixture(scope="module")
def pipe():
    return make_pipe()

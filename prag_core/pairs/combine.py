"""How a question's k retrieved documents combine into one update of the FFN weights.

For the documents j = 1..k (best first) with pairs (A_j, B_j), α each, and retrieval scores s_j (the pipeline
passes T times its retriever's score_scale, so T = 1 weights alike for BM25, dense and hybrid scores):

    sum     ΔW = α Σ_j A_j B_jᵀ                      PRAG (PEFT's `cat`): w_j = 1
    mean    ΔW = α Σ_j (1/k) A_j B_jᵀ                w_j = 1/k
    score   ΔW = α Σ_j w_j A_j B_jᵀ,  w = softmax(s / T)
                                                     T → 0: the top document alone; T → ∞: mean
    dyprag  ΔW = α Ā B̄ᵀ,  Ā = (1/k) Σ_j A_j,  B̄ = (1/k) Σ_j B_j
                                                     DyPRAG (arXiv 2503.23895): one averaged pair
                                                     (so cross terms A_i B_jᵀ / k² are in it)

sum, mean and score are weights per document: `combine` returns the documents with their
weights, which the fused kernel applies as its per-row column weights (no extra work) and
the merge baseline folds into the A columns it adds. dyprag returns one new pair set of
rank r (a mean over k tensors per projection), weight 1.
"""

import math

from prag_core.pairs.choices import check_scheme
from prag_core.pairs.doc_params import DocParams


def softmax_weights(scores, temperature):
    """softmax(s / T), computed stably (the top score subtracted first)."""
    top = max(scores)
    exps = [math.exp((s - top) / temperature) for s in scores]
    return [e / sum(exps) for e in exps]


def combine(docs, scores, scheme="sum", temperature=1.0):
    """(documents, weights) to activate for one question: see the module docstring.

    docs: the retrieved DocParams, best first; scores: their retrieval scores (same order)."""
    check_scheme(scheme, temperature)
    if len(docs) != len(scores):
        raise ValueError(f"{len(docs)} documents but {len(scores)} scores")
    if not docs:
        return [], []
    if scheme == "sum":
        return list(docs), [1.0] * len(docs)
    if scheme == "mean":
        return list(docs), [1.0 / len(docs)] * len(docs)
    if scheme == "score":
        return list(docs), softmax_weights(scores, temperature)
    if len(docs) == 1:
        return list(docs), [1.0]
    pairs = {
        path: (sum(d.pairs[path][0] for d in docs) / len(docs), sum(d.pairs[path][1] for d in docs) / len(docs))
        for path in docs[0].pairs
    }
    return [DocParams(pairs, docs[0].alpha, dict(docs[0].meta))], [1.0]

"""The retrievers: bm25 (bm25.py), dense (dense.py) or hybrid, their reciprocal rank fusion.

Every retriever answers search(query, k) -> [(doc_id, score)], best first, and has a score_scale, the unit in
which combine's softmax temperature is read (so T = 1 weights the top documents alike for every retriever), so
the pipeline does not care which one it has. A work directory builds and opens them (storage/workdir.py).

Hybrid: RRF (Cormack et al. 2009) over each retriever's top DEPTH documents,
score(d) = Σ_lists 1 / (RRF_K + rank of d), ranks from 1; a document BM25 scores 0 (no shared word) is not in
BM25's list.
"""

from prag_core.retrieval.bm25 import RetrievalError

RETRIEVERS = ("bm25", "dense", "hybrid")
# `prag build`'s default: the best recall and end-to-end F1 on dev (docs/decisions.md, Retriever: hybrid)
RETRIEVER = "hybrid"
RRF_K = 60
DEPTH = 100


def check_retriever(name):
    if name not in RETRIEVERS:
        raise RetrievalError(f"retriever: unknown {name!r}; choose from {', '.join(RETRIEVERS)}")


def rrf(rankings, k, rrf_k=RRF_K):
    """The k best (doc_id, fused score) of several rankings (lists of ids, best first); ties keep the order in
    which the documents were first seen."""
    scores = {}
    for ranking in rankings:
        for rank, doc_id in enumerate(ranking, 1):
            scores[doc_id] = scores.get(doc_id, 0.0) + 1.0 / (rrf_k + rank)
    return sorted(scores.items(), key=lambda item: -item[1])[:k]  # sorted() is stable


class HybridIndex:
    """RRF of a BM25 and a dense index over the same documents."""

    name = "hybrid"
    # The unit of combine's softmax temperature, chosen as dense.DenseIndex.score_scale was: top-3 weights on
    # dev average 0.82/0.16/0.03 (BM25: 0.85/0.13/0.03). RRF scores are ~1/61 with gaps of ~1/61².
    score_scale = 3e-4

    def __init__(self, bm25, dense, rrf_k=RRF_K, depth=DEPTH):
        self.bm25, self.dense, self.rrf_k, self.depth = bm25, dense, rrf_k, depth

    def __len__(self):
        return len(self.bm25)

    def search(self, query: str, k: int = 3) -> list[tuple[str, float]]:
        if k < 1:
            raise RetrievalError(f"k must be at least 1, got {k}")
        depth = max(k, self.depth)
        lexical = [doc_id for doc_id, score in self.bm25.search(query, depth) if score > 0]
        semantic = [doc_id for doc_id, _ in self.dense.search(query, depth)]
        return rrf([lexical, semantic], k, self.rrf_k)

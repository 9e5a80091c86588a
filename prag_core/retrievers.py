"""A work directory's retriever: bm25 (retrieval.py), dense (dense.py) or hybrid, their reciprocal rank fusion.

Every retriever answers search(query, k) -> [(doc_id, score)], best first, and has a score_scale, the unit in
which combine's softmax temperature is read (so T = 1 weights the top documents alike for every retriever), so
the pipeline does not care which one it has. Files in a work directory W:

    W/index.safetensors   BM25 (always built: it is cheap, and half of hybrid)
    W/dense.safetensors   dense embeddings (built for dense and hybrid)

Hybrid: RRF (Cormack et al. 2009) over each retriever's top DEPTH documents,
score(d) = Σ_lists 1 / (RRF_K + rank of d), ranks from 1; a document BM25 scores 0 (no shared word) is not in
BM25's list.
"""
from .dense import DenseIndex, embedder_id, load_embedder
from .retrieval import BM25Index, RetrievalError

RETRIEVERS = ("bm25", "dense", "hybrid")
RETRIEVER = "hybrid"  # `prag build`'s default: the best recall and end-to-end F1 on dev (README "Retrieval")
BM25_FILE, DENSE_FILE = "index.safetensors", "dense.safetensors"
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


def write_indexes(docs, workdir, retriever, embedder=None, progress=False):
    """Build and save W's indexes for `retriever`; embedder: (model, id) from dense.load_embedder, for dense and
    hybrid. The embeddings of documents whose text is unchanged are taken from the dense index already there."""
    check_retriever(retriever)
    BM25Index.build(docs).save(workdir / BM25_FILE)
    if retriever == "bm25":
        return
    model, ident = embedder
    previous = None
    if (workdir / DENSE_FILE).is_file():
        try:
            previous = DenseIndex.load(workdir / DENSE_FILE)
        except RetrievalError:  # damaged or old: embed everything again
            pass
    DenseIndex.build(docs, model, ident, previous, progress).save(workdir / DENSE_FILE)


def open_retriever(workdir, retriever, corpus_hash, embedder=None, device="cpu"):
    """W's `retriever`, its indexes checked against the corpus (corpus_sha256) and, when given, the embedder
    the work directory was built with (a name or path); one-line RetrievalError otherwise."""
    check_retriever(retriever)
    bm25 = BM25Index.load(workdir / BM25_FILE) if retriever != "dense" else None
    dense = None
    if retriever != "bm25":
        if not (workdir / DENSE_FILE).is_file():
            raise RetrievalError(f"{workdir / DENSE_FILE}: no dense index; build it with "
                                 f"`prag build --retriever {retriever}`")
        dense = DenseIndex.load(workdir / DENSE_FILE, None if embedder is None else embedder_id(embedder))
    for index, name in ((bm25, BM25_FILE), (dense, DENSE_FILE)):
        if index is not None and index.corpus_sha256 != corpus_hash:
            raise RetrievalError(f"{workdir}: {name} was built from another corpus than corpus.jsonl; "
                                 f"run `prag build` again")
    if dense is None:
        return bm25
    dense.model, _ = load_embedder(dense.embedder, device)
    return dense if bm25 is None else HybridIndex(bm25, dense)

"""BM25 retrieval over title + text: Okapi BM25 as rank_bm25 defines it, scored by bm25s's sparse-matrix engine.

Okapi BM25 as rank_bm25's BM25Okapi defines it, for query terms q (repeats count) and document d:

    score(q, d) = Σ_{t ∈ q} s(t, d),   s(t, d) = idf(t) · f(t,d)·(k1 + 1) / (f(t,d) + k1·(1 − b + b·|d| / avgdl))
    idf(t)      = ln(N − n(t) + 0.5) − ln(n(t) + 0.5), replaced by ε·mean(idf) (ε = 0.25) where negative

with f(t,d) the count of t in d, |d| the token count of d, n(t) the number of documents holding t, N the number
of documents. (A term in exactly half the documents gets idf 0: Okapi's formula, kept as is.)

The engine is bm25s's "eager" BM25: every s(t, d) is computed once at build time into a sparse term-by-document
matrix (CSC: per term, its documents and their scores), so a query is a sum of a few sparse columns
(bm25s.BM25.get_scores_from_ids) and a top-k. bm25s's own idf variants cannot express Okapi's ε floor (its
"robertson" floors at 0; on our dev/test sets its top 3 agrees with today's for only 53-61 % of the
questions), so the matrix is built here (numpy: what bm25s's build_index_from_ids does, with Okapi's idf) and
handed to a bm25s.BM25 as its scores and vocab_dict: the statistics in float64 with rank_bm25's operations,
so the scores are equal to BM25Okapi.get_scores'.

A build reuses the term counts of documents whose indexed text is unchanged (by sha256), so adding documents
tokenizes only the new ones; the statistics (N, avgdl, idf) change with every document, so the matrix is recomputed
(vectorized numpy: seconds at 1M documents).

On disk: one safetensors file (no pickle), memory-mapped when opened (files.mmap_safetensors): nothing is read
until a query touches it. Tensors: score (nnz,) float64, score_doc (nnz,) int32 and score_ptr (V+1,) int64,
the CSC matrix (term t's documents are score_doc[score_ptr[t]:score_ptr[t+1]], in corpus order);
count_term, count_tf (nnz,) int32 and count_ptr (N+1,) int64, the term counts per document (CSR, for the next
build); keys (N, 32) uint8, the sha256 of each document's indexed text. Header metadata: format, version,
tokenizer, k1, b, corpus_sha256, and the JSON lists ids (N) and vocab (V).
"""

import hashlib
import json
import math
import re
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
from safetensors.numpy import save as safetensors_bytes
from tqdm.auto import tqdm

from prag_core.corpus import corpus_sha256
from prag_core.errors import PragError
from prag_core.files import mmap_safetensors, write_bytes_atomic

FORMAT = "prag-bm25"
VERSION = "2"
TOKENIZER = "nfkc-lower-alnum-cjk2-v2"  # bump when tokenize() changes: saved statistics depend on it
K1, B, EPSILON = 1.5, 0.75, 0.25  # rank_bm25's BM25Okapi defaults
REBUILD = "run `prag build` again to rebuild it (trained documents are kept)"  # ends a stale index's error
_WORD = re.compile(r"[^\W_]+")  # runs of unicode letters and digits; punctuation and "_" separate
# Scripts written without spaces between words: Hiragana, Katakana, CJK ideographs (with extension A and the
# compatibility block, and the supplementary planes' extensions), Hangul syllables.
_CJK = re.compile("([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\U00020000-\U0003134f]+)")
_TENSORS = {
    "score": ("nnz", np.float64),
    "score_doc": ("nnz", np.int32),
    "score_ptr": ("V+1", np.int64),
    "count_term": ("nnz", np.int32),
    "count_tf": ("nnz", np.int32),
    "count_ptr": ("N+1", np.int64),
}


class RetrievalError(PragError):
    """Unusable query or index file; one line naming what is wrong."""


def tokenize(text: str) -> list[str]:
    """Lowercased runs of letters/digits (any script); punctuation and whitespace split.

    NFKC first, so composed and decomposed accents (or full-width forms) give the same token. A run of CJK
    characters (no spaces between words) gives its characters and its overlapping character pairs, as
    Lucene's CJK analyser does: "福莫出生" -> 福 莫 出 生 福莫 莫出 出生.
    """
    tokens = []
    for word in _WORD.findall(unicodedata.normalize("NFKC", text).lower()):
        for i, part in enumerate(_CJK.split(word)):  # odd parts are CJK runs
            if i % 2:
                tokens += list(part) + [part[j : j + 2] for j in range(len(part) - 1)]
            elif part:
                tokens.append(part)
    return tokens


def indexed_text(doc) -> str:
    """What a retriever indexes of a document: its title (when it has one) and its text."""
    return f"{doc.title}\n{doc.text}" if doc.title else doc.text


class BM25Index:
    """Top-k BM25 search over a fixed document list; results are (doc_id, score)."""

    name = "bm25"
    # the unit of combine's softmax temperature: BM25 scores as they are (T = 1, the one temperature measured on dev)
    score_scale = 1.0

    def __init__(self, ids, vocab, arrays, corpus_hash, k1=K1, b=B):
        import bm25s  # here: the package imports without it until an index is opened

        self.ids, self.vocab, self.corpus_sha256 = ids, vocab, corpus_hash
        self.k1, self.b = k1, b
        self._arrays = arrays
        # bm25s's engine over our matrix: get_scores_from_ids sums the query terms' columns in query order
        self._engine = bm25s.BM25(k1=k1, b=b, method="robertson", dtype="float64", backend="numpy")
        self._engine.vocab_dict = {term: i for i, term in enumerate(vocab)}
        self._engine.scores = {
            "data": arrays["score"],
            "indices": arrays["score_doc"],
            "indptr": arrays["score_ptr"],
            "num_docs": len(ids),
        }
        self._engine.nonoccurrence_array = None

    def __len__(self):
        return len(self.ids)

    @classmethod
    def build(cls, docs, previous=None, progress=False) -> "BM25Index":
        """Index Documents (corpus.Document) by the tokens of their title and text; the term counts of documents
        whose indexed text `previous` (an index) holds are taken from it instead of tokenizing again."""
        if not docs:
            raise RetrievalError("cannot build a BM25 index over an empty corpus")
        keys = [hashlib.sha256(indexed_text(doc).encode("utf-8")).digest() for doc in docs]
        # Term ids while reading: the previous index's own ids, then new terms after them. Renumbered below into
        # order of first appearance, as rank_bm25 meets the terms (its idf sum runs in that order).
        known, term_id, counts = {}, {}, {}
        if previous is not None:
            known, term_id = previous._row_of_key(), previous._engine.vocab_dict
            counts = {name: np.asarray(a) for name, a in previous._arrays.items()}  # plain views: faster slices
        new_terms = {}
        terms, tfs, lens = [], [], []
        for doc, key in tqdm(zip(docs, keys), total=len(docs), desc="bm25", unit="doc", disable=not progress):
            if key in known:
                lo, hi = counts["count_ptr"][known[key]], counts["count_ptr"][known[key] + 1]
                terms.append(counts["count_term"][lo:hi])
                tfs.append(counts["count_tf"][lo:hi])
            else:
                counter = Counter(tokenize(indexed_text(doc)))  # in order of first occurrence, as rank_bm25
                ids = [term_id.get(w) for w in counter]
                ids = [
                    new_terms.setdefault(w, len(term_id) + len(new_terms)) if i is None else i
                    for w, i in zip(counter, ids)
                ]
                terms.append(np.array(ids, np.int32))
                tfs.append(np.array(list(counter.values()), np.int32))
            lens.append(len(terms[-1]))
        terms, tf = np.concatenate(terms).astype(np.int64), np.concatenate(tfs)
        if not len(terms):
            raise RetrievalError("cannot build a BM25 index: no document has a single word")
        seen, first = np.unique(terms, return_index=True)
        seen = seen[np.argsort(first)]  # the terms in order of first appearance; a removed document's are gone
        renumber = np.empty(len(term_id) + len(new_terms), np.int64)
        renumber[seen] = np.arange(len(seen))
        words = (previous.vocab if previous is not None else []) + list(new_terms)
        return cls(
            [doc.id for doc in docs],
            [words[t] for t in seen.tolist()],
            _okapi_arrays(renumber[terms].astype(np.int32), tf, np.array(lens), len(seen), keys),
            corpus_sha256(docs),
        )

    def _row_of_key(self) -> dict:
        """{sha256 of a document's indexed text: its row}, for build()."""
        keys = np.asarray(self._arrays["keys"])
        return {keys[i].tobytes(): i for i in range(len(self.ids))}

    def search(self, query: str, k: int = 3) -> list[tuple[str, float]]:
        """The k best documents, best first; ties go to the earlier document in the corpus.

        Returns min(k, len(self)) results, even those with score 0 (no shared term).
        """
        if k < 1:
            raise RetrievalError(f"k must be at least 1, got {k}")
        terms = tokenize(query)
        if not terms:
            raise RetrievalError(f"empty query: {query!r} has no words to search for")
        scores = self._engine.get_scores_from_ids(self._engine.get_tokens_ids(terms))  # unseen terms score 0
        # The documents scoring at least the k-th best score, then a stable sort of those alone: equal scores
        # keep corpus order, as a stable sort of all would, without sorting a large corpus.
        candidates = np.arange(len(scores))
        if k < len(scores):
            candidates = np.flatnonzero(scores >= np.partition(scores, len(scores) - k)[len(scores) - k])
        order = candidates[np.argsort(-scores[candidates], kind="stable")][:k]
        return [(self.ids[i], float(scores[i])) for i in order]

    def save(self, path) -> None:
        """Write the index as one safetensors file (atomically)."""
        metadata = {
            "format": FORMAT,
            "version": VERSION,
            "tokenizer": TOKENIZER,
            "k1": repr(self.k1),
            "b": repr(self.b),
            "corpus_sha256": self.corpus_sha256,
            "ids": json.dumps(self.ids, ensure_ascii=False),
            "vocab": json.dumps(self.vocab, ensure_ascii=False),
        }
        arrays = {name: np.ascontiguousarray(array) for name, array in self._arrays.items()}
        write_bytes_atomic(path, safetensors_bytes(arrays, metadata=metadata))

    @classmethod
    def load(cls, path) -> "BM25Index":
        """Open an index written by save(), memory-mapped; errors name the file and the field."""
        path = Path(path)
        meta, arrays = mmap_safetensors(path, RetrievalError, "BM25 index")
        if meta.get("format") != FORMAT:
            raise RetrievalError(f"{path}: not a prag BM25 index (field 'format' is not {FORMAT!r})")
        for field, expected in (("version", VERSION), ("tokenizer", TOKENIZER)):
            if meta.get(field) != expected:
                raise RetrievalError(
                    f"{path}: field {field!r} is {meta.get(field)!r}, this prag reads {expected!r}; {REBUILD}"
                )
        try:
            ids, vocab = json.loads(meta["ids"]), json.loads(meta["vocab"])
            k1, b = float(meta["k1"]), float(meta["b"])
        except (KeyError, ValueError) as err:
            raise RetrievalError(f"{path}: header field {err} is missing or malformed") from None
        _check_arrays(path, arrays, len(ids), len(vocab))
        return cls(ids, vocab, arrays, meta.get("corpus_sha256"), k1, b)


def _okapi_arrays(terms, tf, lens, n_terms, keys) -> dict:
    """The index's tensors from the term counts per document (CSR: `terms`, `tf`, `lens` entries per document),
    with the float operations of rank_bm25's BM25Okapi (so the scores are equal to its scores)."""
    n_docs = len(lens)
    doc_of = np.repeat(np.arange(n_docs), lens)
    doc_len = np.bincount(doc_of, weights=tf, minlength=n_docs).astype(np.int64)  # exact: integer counts
    df = np.bincount(terms, minlength=n_terms)
    idf = [math.log(n_docs - n + 0.5) - math.log(n + 0.5) for n in df.tolist()]
    floor = EPSILON * (sum(idf) / len(idf))  # rank_bm25: ε·mean, the mean summed in order of first appearance
    idf = np.array([floor if x < 0 else x for x in idf])
    norm = K1 * (1 - B + B * doc_len / (sum(doc_len.tolist()) / n_docs))
    score = idf[terms] * (tf * (K1 + 1) / (tf + norm[doc_of]))
    by_term = np.argsort(terms, kind="stable")  # stable: each term's documents stay in corpus order
    return {
        "score": score[by_term],
        "score_doc": doc_of[by_term].astype(np.int32),
        "score_ptr": np.concatenate([[0], np.cumsum(df)]).astype(np.int64),
        "count_term": terms,
        "count_tf": tf,
        "count_ptr": np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
        "keys": np.frombuffer(b"".join(keys), np.uint8).reshape(n_docs, 32),
    }


def _check_arrays(path, arrays, n_docs, n_terms):
    """Shapes and ranges that search() and build() rely on; a mismatch names the tensor."""
    for name in (*_TENSORS, "keys"):
        if name not in arrays:
            raise RetrievalError(f"{path}: tensor {name!r} is missing")
    sizes = {"nnz": len(arrays["score"]), "V+1": n_terms + 1, "N+1": n_docs + 1}
    expected = {name: ((sizes[size],), np.dtype(dtype)) for name, (size, dtype) in _TENSORS.items()}
    expected["keys"] = ((n_docs, 32), np.dtype(np.uint8))
    for name, (shape, dtype) in expected.items():
        if arrays[name].shape != shape or arrays[name].dtype != dtype:
            got = f"{arrays[name].dtype}{list(arrays[name].shape)}"
            raise RetrievalError(f"{path}: tensor {name!r} is {got}, expected {dtype}{list(shape)}")
    nnz = sizes["nnz"]
    for name in ("score_ptr", "count_ptr"):
        ptr = arrays[name]
        if n_docs == 0 or ptr[0] != 0 or ptr[-1] != nnz or np.any(np.diff(ptr) < 0):
            raise RetrievalError(f"{path}: tensor {name!r} is not a valid offset table")
    for name, bound, what in (("score_doc", n_docs, "document"), ("count_term", n_terms, "term")):
        if nnz and not (0 <= arrays[name].min() and arrays[name].max() < bound):
            raise RetrievalError(f"{path}: tensor {name!r} holds a {what} index out of range")

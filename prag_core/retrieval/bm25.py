"""BM25 retrieval over title + text: rank_bm25's BM25Okapi statistics, stored as safetensors postings.

Okapi BM25 as rank_bm25 defines it, for query terms q (repeats count) and document d:

    score(q, d) = Σ_{t ∈ q} idf(t) · f(t,d)·(k1 + 1) / (f(t,d) + k1·(1 − b + b·|d| / avgdl))
    idf(t)      = ln(N − n(t) + 0.5) − ln(n(t) + 0.5), floored at ε·mean(idf) where negative

with f(t,d) the count of t in d, |d| the token count of d, n(t) the number of
documents holding t, N the number of documents. (A term in exactly half the
documents gets idf 0: that is Okapi's formula, kept as is.)

BM25Okapi computes the statistics at build time. The index keeps them as an
inverted file (per term: the documents holding it and the counts), so a query
touches only its terms' postings, and loading is a memory read of a few numeric
arrays: nothing is re-tokenized and no per-document dicts are rebuilt. search()
evaluates the formula above with the same floating-point operations as
BM25Okapi.get_scores, so the scores are equal to its scores.

On disk: one safetensors file (no pickle). Tensors idf (V,) float64,
doc_len (N,) int64, postings_ptr (V+1,) int64, postings_doc and postings_tf
(nnz,) int32; term t's postings are postings_*[ptr[t]:ptr[t+1]]. Header
metadata: format, version, tokenizer, k1, b, corpus_sha256, and the JSON lists
ids (N) and vocab (V).
"""

import hashlib
import json
import re
import unicodedata
from pathlib import Path

import numpy as np
from rank_bm25 import BM25Okapi
from safetensors.numpy import save as safetensors_bytes

from prag_core.corpus import read_safetensors, write_bytes_atomic
from prag_core.errors import PragError

FORMAT = "prag-bm25"
VERSION = "1"
TOKENIZER = "nfkc-lower-alnum-cjk2-v2"  # bump when tokenize() changes: saved statistics depend on it
_WORD = re.compile(r"[^\W_]+")  # runs of unicode letters and digits; punctuation and "_" separate
# Scripts written without spaces between words: Hiragana, Katakana, CJK ideographs (with extension A and the
# compatibility block, and the supplementary planes' extensions), Hangul syllables.
_CJK = re.compile("([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\U00020000-\U0003134f]+)")
_TENSORS = ("idf", "doc_len", "postings_ptr", "postings_doc", "postings_tf")


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


def corpus_sha256(docs) -> str:
    """One hash of the ids, titles and texts, in order, to tell whether an index matches a corpus."""
    h = hashlib.sha256()
    for doc in docs:
        h.update(json.dumps([doc.id, doc.title, doc.sha256]).encode("utf-8") + b"\n")
    return h.hexdigest()


class BM25Index:
    """Top-k BM25 search over a fixed document list; results are (doc_id, score)."""

    name = "bm25"
    # the unit of combine's softmax temperature: BM25 scores as they are (T = 1, the one temperature measured on dev)
    score_scale = 1.0

    def __init__(self, ids, vocab, arrays, k1, b, corpus_hash):
        self.ids = ids
        self.vocab = vocab
        self.corpus_sha256 = corpus_hash
        self.k1, self.b = k1, b
        self._arrays = arrays
        self._term_id = {term: i for i, term in enumerate(vocab)}
        doc_len = arrays["doc_len"]
        # The length-normalised k1 of every document, as BM25Okapi.get_scores computes it.
        avgdl = doc_len.sum() / len(doc_len)
        self._norm = k1 * (1 - b + b * doc_len / avgdl)

    def __len__(self):
        return len(self.ids)

    @classmethod
    def build(cls, docs) -> "BM25Index":
        """Index Documents (corpus.Document) by the tokens of their title and text."""
        if not docs:
            raise RetrievalError("cannot build a BM25 index over an empty corpus")
        tokens = [tokenize(indexed_text(doc)) for doc in docs]
        if not any(tokens):
            raise RetrievalError("cannot build a BM25 index: no document has a single word")
        bm = BM25Okapi(tokens)
        vocab = sorted(bm.idf)
        term_id = {term: i for i, term in enumerate(vocab)}
        # (term, doc, count) triples, grouped by term: a CSC term-document matrix.
        terms, docs_of, counts = [], [], []
        for d, freqs in enumerate(bm.doc_freqs):
            terms.extend(term_id[t] for t in freqs)
            docs_of.extend([d] * len(freqs))
            counts.extend(freqs.values())
        terms = np.array(terms, dtype=np.int64)
        order = np.argsort(terms, kind="stable")  # stable: each term's documents stay in corpus order
        arrays = {
            "idf": np.array([bm.idf[t] for t in vocab], dtype=np.float64),
            "doc_len": np.array(bm.doc_len, dtype=np.int64),
            "postings_ptr": np.concatenate([[0], np.cumsum(np.bincount(terms, minlength=len(vocab)))]),
            "postings_doc": np.array(docs_of, dtype=np.int32)[order],
            "postings_tf": np.array(counts, dtype=np.int32)[order],
        }
        return cls([doc.id for doc in docs], vocab, arrays, bm.k1, bm.b, corpus_sha256(docs))

    def search(self, query: str, k: int = 3) -> list[tuple[str, float]]:
        """The k best documents, best first; ties go to the earlier document in the corpus.

        Returns min(k, len(self)) results, even those with score 0 (no shared term).
        """
        if k < 1:
            raise RetrievalError(f"k must be at least 1, got {k}")
        terms = tokenize(query)
        if not terms:
            raise RetrievalError(f"empty query: {query!r} has no words to search for")
        a = self._arrays
        scores = np.zeros(len(self.ids))
        for term in terms:
            t = self._term_id.get(term)
            if t is None:  # unseen term: idf 0 in rank_bm25
                continue
            lo, hi = a["postings_ptr"][t], a["postings_ptr"][t + 1]
            docs, tf = a["postings_doc"][lo:hi], a["postings_tf"][lo:hi]
            scores[docs] += a["idf"][t] * (tf * (self.k1 + 1) / (tf + self._norm[docs]))
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
        write_bytes_atomic(path, safetensors_bytes(self._arrays, metadata=metadata))

    @classmethod
    def load(cls, path) -> "BM25Index":
        """Read an index written by save(); errors name the file and the field."""
        path = Path(path)
        meta, arrays = read_safetensors(path, RetrievalError, "BM25 index", framework="np", names=_TENSORS)
        if meta.get("format") != FORMAT:
            raise RetrievalError(f"{path}: not a prag BM25 index (field 'format' is not {FORMAT!r})")
        for field, expected in (("version", VERSION), ("tokenizer", TOKENIZER)):
            if meta.get(field) != expected:
                raise RetrievalError(
                    f"{path}: field {field!r} is {meta.get(field)!r}, this prag reads {expected!r}; rebuild the index"
                )
        try:
            ids, vocab = json.loads(meta["ids"]), json.loads(meta["vocab"])
            k1, b = float(meta["k1"]), float(meta["b"])
        except (KeyError, ValueError) as err:
            raise RetrievalError(f"{path}: header field {err} is missing or malformed") from None
        _check_arrays(path, arrays, len(ids), len(vocab))
        return cls(ids, vocab, arrays, k1, b, meta.get("corpus_sha256"))


def _check_arrays(path, arrays, n_docs, n_terms):
    """Shapes and ranges that search() relies on; a mismatch names the tensor."""
    missing = [name for name in _TENSORS if name not in arrays]
    if missing:
        raise RetrievalError(f"{path}: tensor {missing[0]!r} is missing")
    ptr, nnz = arrays["postings_ptr"], len(arrays["postings_doc"])
    expected = {
        "idf": (n_terms, np.float64),
        "doc_len": (n_docs, np.int64),
        "postings_ptr": (n_terms + 1, np.int64),
        "postings_doc": (nnz, np.int32),
        "postings_tf": (nnz, np.int32),
    }
    for name, (size, dtype) in expected.items():
        if arrays[name].shape != (size,) or arrays[name].dtype != dtype:
            raise RetrievalError(
                f"{path}: tensor {name!r} is {arrays[name].dtype}{list(arrays[name].shape)}, "
                f"expected {np.dtype(dtype)}[{size}]"
            )
    if n_docs == 0 or ptr[0] != 0 or ptr[-1] != nnz or np.any(np.diff(ptr) < 0):
        raise RetrievalError(f"{path}: tensor 'postings_ptr' is not a valid offset table")
    if nnz and not (0 <= arrays["postings_doc"].min() and arrays["postings_doc"].max() < n_docs):
        raise RetrievalError(f"{path}: tensor 'postings_doc' holds a document index out of range")

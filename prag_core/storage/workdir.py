"""A work directory W: one knowledge base, and the one place that knows its layout.

    W/config.json         what `prag build` was asked for: model, training tag, augmentation, retriever, ...
    W/corpus.jsonl        the documents (or passages) as built, texts cut to the model's context
    W/index.safetensors   the BM25 index (always built: cheap, and half of hybrid)
    W/dense.safetensors   dense embeddings (retrievers dense and hybrid)
    W/augment.jsonl       the augmentation cache (offline/augment.py)
    W/warmup.safetensors  the warm-up pair (offline/warmup.py), when the build has one
    W/store/              the parameter store (storage/store.py)
    W/demo_results.json   `prag demo`'s results (answer/evaluate.py's results format)

No other module joins these names; they ask a Workdir. Its refusals are one-line WorkdirErrors.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from prag_core.corpus import read_corpus, read_json, write_jsonl_atomic, write_text_atomic
from prag_core.errors import PragError
from prag_core.pairs.peft_export import CONFIG_NAME, WEIGHTS_NAME, export_peft
from prag_core.retrieval.bm25 import BM25Index, RetrievalError
from prag_core.retrieval.dense import DenseIndex, embedder_id, load_embedder
from prag_core.retrieval.retrievers import HybridIndex, check_retriever
from prag_core.storage.store import Store, StoreError


class WorkdirError(PragError):
    """A work directory that is missing, not a directory, or not built by prag."""


@dataclass(frozen=True)
class Workdir:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    def __str__(self):
        return str(self.root)

    config = property(lambda self: self.root / "config.json")
    corpus = property(lambda self: self.root / "corpus.jsonl")
    bm25_index = property(lambda self: self.root / "index.safetensors")
    dense_index = property(lambda self: self.root / "dense.safetensors")
    augmentations = property(lambda self: self.root / "augment.jsonl")
    warmup = property(lambda self: self.root / "warmup.safetensors")
    store_folder = property(lambda self: self.root / "store")
    demo_results = property(lambda self: self.root / "demo_results.json")

    def check_buildable(self):
        """WorkdirError unless W is a directory or does not exist yet."""
        if self.root.exists() and not self.root.is_dir():
            raise WorkdirError(f"{self.root}: a file, not a work directory; choose another --workdir")

    def check_built(self):
        """WorkdirError unless `prag build` has written W."""
        if self.root.exists() and not self.root.is_dir():
            raise WorkdirError(f"{self.root}: a file, not a work directory")
        if not self.root.is_dir():
            raise WorkdirError(
                f"{self.root}: no such work directory; create it with "
                f"`prag build --corpus corpus.jsonl --workdir {self.root}`"
            )
        if not self.config.is_file():
            raise WorkdirError(f"{self.root}: not a prag work directory (no config.json); run `prag build` into it")

    def read_config(self):
        """W/config.json as a dict; a one-line WorkdirError naming the file, and the field, when it is unreadable
        or a field prag reads has the wrong type."""
        config = read_json(self.config, WorkdirError)
        fix = "run `prag build` again to rewrite it"
        if not isinstance(config, dict):
            raise WorkdirError(f"{self.config}: expected a JSON object, got {type(config).__name__}; {fix}")
        for key, kind in {"model": str, "retriever": str, "embedder": str, "warmup": str, "training": dict}.items():
            if config.get(key) is not None and not isinstance(config[key], kind):
                got = f"{type(config[key]).__name__} {json.dumps(config[key])[:40]}"
                raise WorkdirError(f"{self.config}: field {key!r} must be a {kind.__name__} or null, got {got}; {fix}")
        return config

    def write_config(self, settings):
        write_text_atomic(self.config, json.dumps(settings, indent=1) + "\n")

    def model_path(self, config):
        """The model config.json names (None: the embedded one); a WorkdirError when its folder has moved."""
        model = config.get("model")
        if model and Path(model).is_absolute() and not Path(model).exists():
            raise WorkdirError(
                f"{self.config}: the model folder of its 'model' entry, {model}, does not exist "
                f"(moved?); put the model back or set 'model' to where it is now"
            )
        return model

    def read_corpus(self):
        return read_corpus(self.corpus)

    def write_corpus(self, docs):
        write_jsonl_atomic(
            self.corpus, [{"id": d.id, "text": d.text, **({"title": d.title} if d.title else {})} for d in docs]
        )

    def open_store(self, fingerprint=None, training=None, **options):
        """The parameter store (storage.store.Store: options device, compute_dtype, storage_dtype, shard_size)."""
        return Store(self.store_folder, fingerprint, training, **options)

    def write_indexes(self, docs, retriever, embedder=None, progress=False):
        """Build and save the indexes `retriever` needs; embedder: (model, id) from dense.load_embedder, for dense
        and hybrid. The embeddings of documents whose text is unchanged are taken from the dense index there."""
        check_retriever(retriever)
        BM25Index.build(docs).save(self.bm25_index)
        if retriever == "bm25":
            return
        model, ident = embedder
        previous = None
        if self.dense_index.is_file():
            try:
                previous = DenseIndex.load(self.dense_index)
            except RetrievalError:  # damaged or old: embed everything again
                pass
        DenseIndex.build(docs, model, ident, previous, progress).save(self.dense_index)

    def open_retriever(self, retriever, corpus_hash, embedder=None, device="cpu"):
        """The `retriever`, its indexes checked against the corpus (corpus_sha256) and, when given, the embedder
        W was built with (a name or path); one-line RetrievalError otherwise."""
        check_retriever(retriever)
        bm25 = BM25Index.load(self.bm25_index) if retriever != "dense" else None
        dense = None
        if retriever != "bm25":
            if not self.dense_index.is_file():
                raise RetrievalError(
                    f"{self.dense_index}: no dense index; build it with `prag build --retriever {retriever}`"
                )
            dense = DenseIndex.load(self.dense_index, None if embedder is None else embedder_id(embedder))
        for index, path in ((bm25, self.bm25_index), (dense, self.dense_index)):
            if index is not None and index.corpus_sha256 != corpus_hash:
                raise RetrievalError(
                    f"{self.root}: {path.name} was built from another corpus than corpus.jsonl; run `prag build` again"
                )
        if dense is None:
            return bm25
        dense.model, _ = load_embedder(dense.embedder, device)
        return dense if bm25 is None else HybridIndex(bm25, dense)

    def export_peft(self, doc_ids, out_dir, force=False):
        """Documents of W, by id, as one PEFT LoRA adapter folder (pairs.peft_export); StoreError names a missing
        id or store, or an adapter already in `out_dir` (unless force)."""
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise StoreError(f"{out}: a file, not a folder for the adapter")
        if not force and any((out / name).exists() for name in (CONFIG_NAME, WEIGHTS_NAME)):
            raise StoreError(f"{out}: holds an adapter already; pass --force to overwrite it")
        store = self.open_store()  # its own fingerprint: exporting needs its documents, not the model
        missing = [d for d in doc_ids if d not in store]
        if missing:
            raise StoreError(f"{store.path}: unknown document id(s) {', '.join(map(repr, missing))}")
        return export_peft([store[d] for d in doc_ids], out_dir)

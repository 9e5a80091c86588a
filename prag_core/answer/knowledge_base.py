"""A knowledge base, opened: what a Pipeline answers with (KnowledgeBase: model, retriever, passages, parameter
store, warm-up pair, training tag, work directory), from a built work directory (KnowledgeBase.open, every part
checked against the others); and the document pool an AnswerConfig asks for."""

from dataclasses import dataclass

import torch

from prag_core.answer.requests import PipelineError
from prag_core.corpus import CorpusTexts
from prag_core.model.inject import inject
from prag_core.model.load import check_device, load_model
from prag_core.model.pool import DocumentPool
from prag_core.pairs.doc_params import DocParams, model_fingerprint
from prag_core.storage.workdir import Workdir


def document_pool(model, training, config):
    """The DocumentPool config asks for (pool_slots > 0), sized for the work directory's rank and alpha."""
    if not config.pool_slots:
        return None
    if config.pool_slots < 0 or config.pool_rows < 1:
        raise PipelineError(f"pool_slots: expected 0 (no pool) or more, got {config.pool_slots}", field="pool_slots")
    if training is None:
        raise PipelineError("pool_slots: the work directory records no training settings (rank, alpha); rebuild it")
    return DocumentPool(inject(model), training["rank"], training["alpha"], config.pool_slots, config.pool_rows)


def open_index(workdir, device, retriever=None):
    """(config, passages, retriever) of a built work directory: the retriever W/config.json names, or `retriever`,
    its indexes checked against the corpus; a one-line PragError otherwise. The passages (corpus.CorpusTexts) are
    ids and offsets: a passage stays in the file until a prompt needs it."""
    workdir = Workdir(workdir)
    workdir.check_built()
    config = workdir.read_config()
    texts = CorpusTexts(workdir.corpus)
    index = workdir.open_retriever(
        retriever or config.get("retriever", "bm25"),  # bm25: built before retrievers
        texts.corpus_sha256,
        config.get("embedder"),
        device,
    )
    return config, texts, index


@dataclass
class KnowledgeBase:
    """One knowledge base's parts.

    model, tokenizer  the causal LM (a Pipeline injects it, in place) and its tokenizer (with a pad token)
    index             a retriever (prag_core.retrieval.retrievers): search(question, k) -> [(id, score)]
    store             document id -> DocParams (a dict, or a work directory's store.Store)
    documents_text    document id -> passage text (for rag and combine)
    warmup            the warm-up pair (prag_core.offline.warmup), active with weight 1 beside every question's
                      documents in the pair modes, or None
    training          the training tag (TrainConfig.to_dict()) every served document must carry, so a store left
                      half re-encoded by an interrupted rebuild is refused, not mixed; None: not checked
    workdir           the storage.workdir.Workdir it was opened from (to see documents leave it), or None"""

    model: object
    tokenizer: object
    index: object
    store: object
    documents_text: object
    warmup: object = None
    training: dict | None = None
    workdir: Workdir | None = None

    @classmethod
    def open(cls, workdir, device=None, retriever=None):
        """The knowledge base of a built work directory on `device` (None: cuda when available), with its own
        retriever or `retriever`; a one-line PragError when a part is missing or does not fit the others."""
        device = str(check_device(device or ("cuda" if torch.cuda.is_available() else "cpu")))  # before any loads
        config, texts, index = open_index(workdir, device, retriever)
        workdir = Workdir(workdir)
        model, tokenizer = load_model(workdir.model_path(config), device=device)
        # A store built for another model is refused (StoreError); each document is checked again on load, and
        # 16-bit stored pairs are upcast for an fp32 model.
        fingerprint = model_fingerprint(model)
        store = workdir.open_store(fingerprint, device=device, compute_dtype=model.dtype)
        warmup = None
        if config.get("warmup"):
            warmup = DocParams.load(workdir.warmup, fingerprint, device=device, dtype=model.dtype)
            if warmup.meta.get("warmup_key") != config["warmup"]:
                raise PipelineError(
                    f"{workdir.warmup}: another warm-up pair than the store was trained with; run `prag build` again"
                )
        return cls(model, tokenizer, index, store, texts, warmup, config.get("training"), workdir)

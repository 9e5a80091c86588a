"""The parts of a built work directory that a Pipeline answers with (Pipeline.open): model, retriever, passages,
parameter store, warm-up pair and training tag, checked against each other; and the document pool its config
asks for."""

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


def open_parts(workdir, device, retriever=None):
    """(model, tokenizer, index, store, passages, warm-up pair or None, training tag or None) of a built work
    directory, or a one-line PragError."""
    device = str(check_device(device or ("cuda" if torch.cuda.is_available() else "cpu")))  # before any loads
    config, texts, index = open_index(workdir, device, retriever)
    workdir = Workdir(workdir)
    model_path = workdir.model_path(config)
    model, tokenizer = load_model(model_path, device=device)
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
    return model, tokenizer, index, store, texts, warmup, config.get("training")

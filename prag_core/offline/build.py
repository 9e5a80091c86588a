"""`prag build`: corpus -> retrieval indexes + augmentations + one trained LoRA pair set per document.

build() makes a plan (plan_build: checks the settings, loads the model, writes W's config.json, corpus.jsonl and
indexes through storage.workdir.Workdir, gets the warm-up pair, lists the documents the store lacks) and hands
it to an executor: this process (encode_here) or a Ray cluster (distributed.encode_on_ray). Both train through
encode.encode().

W/config.json records the training tag (`training`: TrainConfig.to_dict(), with a digest of the augmentation
settings); a rebuild with other settings would re-encode every document, so it is refused unless
retrain=True (`--retrain`), and `prag ask` refuses a document whose tag is not the recorded one (a
rebuild killed midway), instead of serving a mix.

Resumable: every file is written atomically, documents already in the store (same
text, same model, same training config) are skipped, and augmentations are cached,
so re-running after a kill, or after editing a few documents, redoes only what is
missing or changed (dense embeddings too).

Long documents: a document whose text has more than `max_passage_tokens(...)`
tokens (two fifths of the model's context after a 256-token reserve: the
augmentation prompt holds the passage, an example and a 1.5x-long rewrite) is
truncated to that many tokens (less the last, maybe split, word), with a warning naming its corpus line; the
truncated text is what is augmented, trained and put in W/corpus.jsonl.
"""

import dataclasses
import json
import time
import warnings
from pathlib import Path

from tqdm.auto import tqdm

from prag_core.corpus import read_corpus, text_sha256
from prag_core.errors import BuildError
from prag_core.files import json_digest
from prag_core.model.inject import ffn_module_paths, inject
from prag_core.model.load import context_length, load_model
from prag_core.offline.augment import LMGenerator, augment_documents, cache_settings, check_words
from prag_core.offline.encode import encode
from prag_core.offline.passages import split_passages
from prag_core.offline.samples import CONSTRUCTIONS
from prag_core.offline.train import DTYPES, TrainingError
from prag_core.offline.train_config import TrainConfig
from prag_core.offline.warmup import WARMUP_CORPUS, warmup_pair
from prag_core.pairs.doc_params import model_fingerprint
from prag_core.retrieval.bm25 import RetrievalError
from prag_core.retrieval.dense import load_embedder
from prag_core.retrieval.retrievers import RETRIEVER, check_retriever
from prag_core.storage.workdir import Workdir

AUGMENTERS = ("model", "fallback")


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    """How `prag build` runs, besides what the pairs depend on (TrainConfig).

    model: a name or path for load_model (None: the embedded SmolLM2). augmenter "model": an LLM writes rewrites
    and QA pairs, the trained model unless augment_model names another; "fallback": the deterministic augmenter.
    storage_dtype ("float32", "bfloat16", "float16") and shard_size (documents per shard; None: a file per
    document) apply to a new store. ray: None = this process encodes; else a Ray cluster address ("" = a local
    cluster) whose workers (one per GPU or CPU, or `workers`) do. warmup: a corpus.jsonl of documents outside
    the knowledge base to train the warm-up pair on, or None. retrain: allow a rebuild with other training
    settings than W/config.json records. retriever: bm25, dense or hybrid; embedder: the sentence-transformers
    model of dense and hybrid (None: the shipped all-MiniLM-L6-v2). passage_words: split documents into
    passages of about that many words, each retrieved and trained on its own; None = whole documents."""

    model: str | None = None
    batch_docs: int = 4
    augmenter: str = "fallback"
    augment_model: str | None = None
    n_rewrites: int = 1
    n_qa: int = 3
    device: str = "cpu"
    storage_dtype: str | None = None
    shard_size: int | None = None
    ray: str | None = None
    workers: int | None = None
    warmup: str | Path | None = WARMUP_CORPUS
    retrain: bool = False
    retriever: str = RETRIEVER
    embedder: str | None = None
    passage_words: int | None = None
    progress: bool = True

    def __post_init__(self):
        if self.augmenter not in AUGMENTERS:
            raise BuildError(f"augmenter: unknown {self.augmenter!r}; choose from {', '.join(AUGMENTERS)}")
        if self.batch_docs < 1 or self.n_qa < 1 or self.n_rewrites < 0:
            raise BuildError(
                f"batch_docs ({self.batch_docs}) and n_qa ({self.n_qa}) must be ≥ 1, n_rewrites ({self.n_rewrites}) ≥ 0"
            )
        try:
            check_retriever(self.retriever)
        except RetrievalError as err:
            raise BuildError(str(err)) from None
        if self.passage_words is not None and self.passage_words < 1:
            raise BuildError(f"passage_words must be at least 1, got {self.passage_words}")


@dataclasses.dataclass(kw_only=True)
class BuildPlan:
    """What an executor needs: the loaded model, the open store, and the documents it lacks (fields by name only:
    twelve in a row are easy to swap)."""

    corpus: Path
    workdir: Workdir
    config: TrainConfig  # with the augmentation digest and the warm-up key
    options: BuildConfig
    model_name: str | None  # options.model, resolved when it is a path (workers load it from there)
    model: object
    tokenizer: object
    generator: object  # augment.LMGenerator, or None for the fallback augmenter
    warm: object  # the warm-up DocParams, or None
    store: object
    pending: list  # (document, fitted document) the store lacks, in corpus order
    total: int  # documents in the corpus

    def augment(self, docs):
        """The augmentations of `docs` (fitted documents), through W's cache, keyed by the text augmented."""
        keyed = [dataclasses.replace(d, sha256=text_sha256(d.text)) for d in docs]
        return augment_documents(
            keyed,
            self.generator,
            self.workdir.augmentations,
            n_rewrites=self.options.n_rewrites,
            n_qa=self.options.n_qa,
        )


def max_passage_tokens(model, tokenizer):
    """How many tokens of a document fit: (context - 256) * 2/5 (model.context_length)."""
    return max(16, (context_length(model, tokenizer) - 256) * 2 // 5)


def fit_documents(docs, tokenizer, limit, corpus_path):
    """The documents with every text cut to `limit` tokens; a warning names each cut document's line."""
    fitted = []
    for doc in docs:
        ids = tokenizer(doc.text, add_special_tokens=False)["input_ids"]
        if len(ids) > limit:
            warnings.warn(
                f"{corpus_path}:{doc.line or '?'}: document {doc.id!r} has {len(ids)} "
                f"tokens, more than the {limit} that fit the model's context; truncated to {limit}",
                stacklevel=2,
            )
            text = tokenizer.decode(ids[:limit], skip_special_tokens=True).strip()
            if len(text.split()) > 1:  # drop the word the cut may have split
                text = text.rsplit(None, 1)[0]
            doc = dataclasses.replace(doc, text=text)
        fitted.append(doc)
    return fitted


@dataclasses.dataclass
class BuildSummary:
    documents: int  # in the corpus
    encoded: int  # trained in this run (the rest were already in the store)
    fallbacks: int  # encoded documents whose augmentation used the deterministic fallback
    seconds: float  # wall time of augmenting + training the encoded documents
    store_bytes: int

    def __str__(self):
        per_doc = f"{self.seconds / self.encoded:.1f} s per document" if self.encoded else "nothing to encode"
        return (
            f"built {self.documents} documents ({self.encoded} encoded now, {self.documents - self.encoded} "
            f"already in the store; {self.fallbacks} with fallback augmentation), {per_doc}, "
            f"store {self.store_bytes / 2**20:.2f} MiB on disk"
        )


def build(corpus, workdir, config=TrainConfig(), options=BuildConfig()):
    """Build (or resume) `workdir` from `corpus` (a corpus.jsonl path); returns a BuildSummary.

    Raises CorpusError (bad corpus), ModelLoadError, RetrievalError (an embedder that does not load),
    StoreError (a store built for another model) or BuildError (bad settings) before the store changes."""
    workdir = Workdir(workdir)
    with workdir.lock() as lock:  # held until the store is closed: one writer at a time
        plan = plan_build(corpus, workdir, config, options, lock)
        start = time.perf_counter()
        if options.ray is not None:
            from prag_core.offline.distributed import encode_on_ray

            fallbacks = encode_on_ray(plan)
        else:
            fallbacks = encode_here(plan)
        plan.store.close()
    return BuildSummary(plan.total, len(plan.pending), fallbacks, time.perf_counter() - start, plan.store.size_bytes())


def plan_build(corpus, workdir, config, options, lock):
    """Check the settings and W (new, empty or a work directory; no input among its files), take W's `lock`
    (a Workdir.lock(): at once if W exists, else before the first write), load the model, write the marker,
    config.json, corpus.jsonl and the indexes, get the warm-up pair, and list the documents the store lacks
    (dropping those no longer in the corpus)."""
    if config.construction not in CONSTRUCTIONS:
        raise BuildError(f"construction: unknown {config.construction!r}; choose from {', '.join(CONSTRUCTIONS)}")
    corpus, workdir = Path(corpus), Workdir(workdir)
    workdir.check_buildable()
    workdir.check_input(corpus, "--corpus")
    workdir.check_input(options.warmup, "--warmup")
    if workdir.root.is_dir():
        workdir.claim(lock)  # another writer is refused before the model loads
    docs = read_corpus(corpus)
    if options.passage_words is not None:
        try:
            docs = split_passages(docs, options.passage_words)
        except ValueError as err:
            raise BuildError(f"{corpus}: {err}") from None
    check_words(docs, corpus)  # before the model loads: a document of punctuation only has nothing to train on
    warmup_docs = read_corpus(options.warmup) if options.warmup is not None else None
    # with Ray, the driver's model only checks settings, fingerprints and tokenizes: the CPU is enough
    device = "cpu" if options.ray is not None else options.device
    lm, tokenizer = load_model(options.model, dtype=DTYPES[config.dtype], device=device)
    encoder = None if options.retriever == "bm25" else load_embedder(options.embedder, device)
    inject(lm)
    try:
        ffn_module_paths(lm, config.targets)
    except ValueError as err:
        raise BuildError(f"targets: {err}") from None
    _warn_rank_above_width(lm, config)
    generator = None
    if options.augmenter == "model":
        writer = (
            (lm, tokenizer)
            if options.augment_model is None
            else load_model(options.augment_model, device=options.device)
        )
        generator = LMGenerator(*writer)
    augmenting = cache_settings(generator, options.n_rewrites, options.n_qa)
    config = dataclasses.replace(config, augmentation=json_digest(augmenting))
    workdir.claim(lock)  # W created, locked and marked before its first file is written
    warm = None
    if warmup_docs is not None:
        warm = warmup_pair(
            lm,
            tokenizer,
            warmup_docs,
            generator,
            config,
            workdir.warmup,
            workdir.augmentations,
            options.n_rewrites,
            options.n_qa,
            options.progress,
        )
        config = dataclasses.replace(config, warmup=warm.meta["warmup_key"])
    store = workdir.open_store(
        model_fingerprint(lm), config.to_dict(), storage_dtype=options.storage_dtype, shard_size=options.shard_size
    )
    model_name = options.model
    if model_name and Path(model_name).exists():  # so `prag ask/eval` and Ray workers find it from anywhere
        model_name = str(Path(model_name).resolve())
    settings = _settings(options, model_name, config, encoder)
    if not options.retrain and len(store):
        _check_same_training(workdir, settings, len(store))
    workdir.write_config(settings)

    fitted = fit_documents(docs, tokenizer, max_passage_tokens(lm, tokenizer), corpus)
    workdir.write_corpus(fitted)
    workdir.write_indexes(fitted, options.retriever, encoder, options.progress)
    pending = [(doc, fit) for doc, fit in zip(docs, fitted) if not store.done(doc)]
    store.retain([d.id for d in docs])
    store.flush()
    return BuildPlan(
        corpus=corpus,
        workdir=workdir,
        config=config,
        options=options,
        model_name=model_name,
        model=lm,
        tokenizer=tokenizer,
        generator=generator,
        warm=warm,
        store=store,
        pending=pending,
        total=len(docs),
    )


def _settings(options, model_name, config, encoder):
    """W/config.json: what `prag ask/eval` need to know of the build, and what a rebuild is checked against."""
    return {
        "model": model_name,
        **config.to_dict(),
        "augmenter": options.augmenter,
        "augment_model": options.augment_model,
        "n_rewrites": options.n_rewrites,
        "n_qa": options.n_qa,
        "retriever": options.retriever,
        "passage_words": options.passage_words,
        "embedder": encoder[1] if encoder else None,
        "warmup_corpus": str(Path(options.warmup).resolve()) if options.warmup is not None else None,
        "training": config.to_dict(),
    }


def encode_here(plan):
    """Encode the plan's pending documents in this process, batch_docs at a time, each batch written to the
    store as it is trained; returns how many used the fallback augmentation."""
    augs = plan.augment([fit for _, fit in plan.pending])
    batch = plan.options.batch_docs
    with tqdm(
        total=plan.total,
        initial=plan.total - len(plan.pending),
        desc="encode",
        unit="doc",
        disable=not plan.options.progress,
    ) as bar:
        for start in range(0, len(plan.pending), batch):
            group, group_augs = plan.pending[start : start + batch], augs[start : start + batch]
            try:
                params = encode(
                    plan.model,
                    plan.tokenizer,
                    [fit.text for _, fit in group],
                    group_augs,
                    plan.config,
                    plan.warm,
                    progress=plan.options.progress,
                )
            except TrainingError as err:
                plan.store.close()  # what was trained before stays
                doc = group[err.doc][0]
                raise BuildError(
                    f"{plan.corpus}:{doc.line or '?'}: document {doc.id!r} diverged "
                    f"({err}); nothing stored for it; lower --lr (now {plan.config.lr:g})"
                ) from None
            for (doc, _), p in zip(group, params):
                plan.store.put(doc, p)
            plan.store.flush()
            bar.set_postfix(loss=f"{sum(p.meta['losses'][-1] for p in params) / len(params):.3f}")
            bar.update(len(group))
    return sum(a.source == "fallback" for a in augs)


def _check_same_training(workdir, settings, n_stored):
    """BuildError when W/config.json records another training tag than `settings` (a rebuild that would
    re-encode all `n_stored` documents), naming the settings that differ."""
    try:
        previous = json.loads(workdir.config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return  # no readable record of what the store holds: per-document tags still decide what is done
    if not isinstance(previous, dict) or previous.get("training") == settings["training"]:
        return
    changed = [
        f"{k} {previous.get(k)!r} → {v!r}"
        for k, v in settings.items()
        if k not in ("model", "training", "augmentation", "warmup") and previous.get(k) != v
    ]
    why = (
        ", ".join(changed) or "augmentation or warm-up"
        if "training" in previous
        else "by a prag too old to record its training settings in config.json"
    )
    raise BuildError(
        f"{workdir}: its {n_stored} stored documents were trained with other settings "
        f"({why}); pass --retrain to encode them all again, or build into another --workdir"
    )


def _warn_rank_above_width(lm, config):
    """A warning when the rank exceeds a target layer's smaller side: such a pair cannot use its extra rank."""
    width = min(
        min(lm.get_submodule(p).in_features, lm.get_submodule(p).out_features)
        for p in ffn_module_paths(lm, config.targets)
    )
    if config.rank > width:
        warnings.warn(
            f"--rank {config.rank} is more than the narrowest target layer's width {width}: the pairs "
            f"cannot use more than rank {width}",
            stacklevel=3,
        )

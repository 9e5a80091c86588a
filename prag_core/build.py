"""`prag build`: corpus -> retrieval indexes + augmentations + one trained LoRA pair set per document.

A work directory W holds one knowledge base:

    W/config.json         model, training config, augmentation settings (read by `prag ask/eval`)
    W/corpus.jsonl        the documents (or passages) as built (see truncation below)
    W/index.safetensors   BM25 index over title + text
    W/dense.safetensors   dense embeddings of title + text (retriever dense or hybrid; prag_core.retrievers)
    W/augment.jsonl       augmentation cache (augment.AugmentCache)
    W/warmup.safetensors  the warm-up pair (warmup.py), when the build has one
    W/store/              parameter store (store.Store): catalog.sqlite + one .safetensors per document, or
                          with shard_size, shards of many documents

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
import hashlib
import json
import os
import time
import warnings
from pathlib import Path

from tqdm.auto import tqdm

from .augment import LMGenerator, augment_documents, cache_settings
from .corpus import read_corpus, text_sha256, write_jsonl_atomic, write_text_atomic
from .dense import load_embedder
from .doc_params import DocParams, DocParamsError, model_fingerprint
from .errors import BuildError
from .inject import ffn_module_paths, inject
from .model import context_length, load_model
from .passages import split_passages
from .retrieval import RetrievalError, corpus_sha256
from .retrievers import RETRIEVER, check_retriever, write_indexes
from .samples import CONSTRUCTIONS, build_samples, distill_items
from .store import Store
from .train import DTYPES, TrainConfig, TrainingError, train_documents
from .warmup import FILE as WARMUP_FILE, TRAINED_WARMUP, WARMUP_CORPUS, train_warmup, warmup_key

AUGMENTERS = ("model", "fallback")

# Test hook: end the process abruptly (os._exit, like a kill) after this many documents were written.
EXIT_AFTER_ENV = "PRAG_BUILD_EXIT_AFTER"


def max_passage_tokens(model, tokenizer):
    """How many tokens of a document fit: (context - 256) * 2/5 (model.context_length)."""
    return max(16, (context_length(model, tokenizer) - 256) * 2 // 5)


def _line_of(path, doc_id):
    """The corpus line holding `doc_id` (for warnings)."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip() and json.loads(line).get("id") == doc_id:
                return lineno
    return "?"


def fit_documents(docs, tokenizer, limit, corpus_path):
    """The documents with every text cut to `limit` tokens; a warning names each cut document's line."""
    fitted = []
    for doc in docs:
        ids = tokenizer(doc.text, add_special_tokens=False)["input_ids"]
        if len(ids) > limit:
            warnings.warn(f"{corpus_path}:{_line_of(corpus_path, doc.id)}: document {doc.id!r} has {len(ids)} "
                          f"tokens, more than the {limit} that fit the model's context; truncated to {limit}",
                          stacklevel=2)
            text = tokenizer.decode(ids[:limit], skip_special_tokens=True).strip()
            if len(text.split()) > 1:  # drop the word the cut may have split
                text = text.rsplit(None, 1)[0]
            doc = dataclasses.replace(doc, text=text)
        fitted.append(doc)
    return fitted


@dataclasses.dataclass
class BuildSummary:
    documents: int       # in the corpus
    encoded: int         # trained in this run (the rest were already in the store)
    fallbacks: int       # encoded documents whose augmentation used the deterministic fallback
    seconds: float       # wall time of augmenting + training the encoded documents
    store_bytes: int

    def __str__(self):
        per_doc = f"{self.seconds / self.encoded:.1f} s per document" if self.encoded else "nothing to encode"
        return (f"built {self.documents} documents ({self.encoded} encoded now, {self.documents - self.encoded} "
                f"already in the store; {self.fallbacks} with fallback augmentation), {per_doc}, "
                f"store {self.store_bytes / 2**20:.2f} MiB on disk")


def build(corpus, workdir, model=None, config=TrainConfig(), batch_docs=4, augmenter="fallback", n_rewrites=1,
          n_qa=3, device="cpu", progress=True, storage_dtype=None, shard_size=None, ray=None, workers=None,
          augment_model=None, warmup=WARMUP_CORPUS, retrain=False, retriever=RETRIEVER, embedder=None,
          passage_words=None):
    """Build (or resume) the work directory `workdir` from `corpus` (a corpus.jsonl path) with `model`
    (a name or path for load_model; None = the embedded SmolLM2). Returns a BuildSummary.

    augmenter "model": an LLM writes rewrites and QA pairs, the trained model unless `augment_model` names
    another (name or path); "fallback": the deterministic augmenter only.

    storage_dtype ("float32", "bfloat16", "float16") and shard_size (documents per shard; None = a file per
    document) apply to a new store (store.Store). ray: None = this process augments and trains; else a
    Ray cluster address ("" = a local cluster) whose workers (one per GPU, or per CPU; or `workers`) do it
    (distributed.encode_on_ray). warmup: a corpus.jsonl of documents outside the knowledge base to train the
    warm-up pair on (warmup.py; kept in W/warmup.safetensors and reused while it matches), or None.
    retrain: allow a rebuild with other training settings than W/config.json records (every document is
    encoded again); without it such a rebuild is a BuildError.
    retriever: bm25, dense or hybrid (retrievers.py); embedder: the sentence-transformers model of dense and
    hybrid, a name or folder (None = the shipped all-MiniLM-L6-v2). passage_words: split documents into
    passages of about that many words (passages.py), each retrieved and trained on its own; None = whole.

    Raises CorpusError (bad corpus), ModelLoadError, RetrievalError (an embedder that does not load), StoreError
    (a store built for another model) or BuildError (bad settings) before anything in `workdir` is changed."""
    if augmenter not in AUGMENTERS:
        raise BuildError(f"augmenter: unknown {augmenter!r}; choose from {', '.join(AUGMENTERS)}")
    if config.construction not in CONSTRUCTIONS:
        raise BuildError(f"construction: unknown {config.construction!r}; choose from {', '.join(CONSTRUCTIONS)}")
    if batch_docs < 1 or n_qa < 1 or n_rewrites < 0:
        raise BuildError(f"batch_docs ({batch_docs}) and n_qa ({n_qa}) must be ≥ 1, n_rewrites ({n_rewrites}) ≥ 0")
    try:
        check_retriever(retriever)
    except RetrievalError as err:
        raise BuildError(str(err)) from None
    if passage_words is not None and passage_words < 1:
        raise BuildError(f"passage_words must be at least 1, got {passage_words}")
    corpus, workdir = Path(corpus), Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise BuildError(f"{workdir}: a file, not a work directory; choose another --workdir")
    docs = read_corpus(corpus)
    if passage_words is not None:
        try:
            docs = split_passages(docs, passage_words)
        except ValueError as err:
            raise BuildError(f"{corpus}: {err}") from None
    warmup_docs = read_corpus(warmup) if warmup is not None else None
    # with Ray, the driver's model only checks settings, fingerprints and tokenizes: the CPU is enough
    lm, tokenizer = load_model(model, dtype=DTYPES[config.dtype], device="cpu" if ray is not None else device)
    encoder = None if retriever == "bm25" else load_embedder(embedder, "cpu" if ray is not None else device)
    inject(lm)
    try:
        ffn_module_paths(lm, config.targets)
    except ValueError as err:
        raise BuildError(f"targets: {err}") from None
    _warn_rank_above_width(lm, config)
    generator = None
    if augmenter == "model":
        writer = (lm, tokenizer) if augment_model is None else load_model(augment_model, device=device)
        generator = LMGenerator(*writer)
    config = dataclasses.replace(config, augmentation=_digest(cache_settings(generator, n_rewrites, n_qa)))
    warm = None
    if warmup_docs is not None:
        warm = _warmup_pair(lm, tokenizer, warmup_docs, generator, workdir, config, n_rewrites, n_qa, progress)
        config = dataclasses.replace(config, warmup=warm.meta["warmup_key"])
    store = Store(workdir / "store", model_fingerprint(lm), config.to_dict(), storage_dtype=storage_dtype,
                  shard_size=shard_size)
    if model and Path(model).exists():  # so `prag ask/eval` find it from any directory
        model = str(Path(model).resolve())
    settings = {"model": model, **config.to_dict(), "augmenter": augmenter, "augment_model": augment_model,
                "n_rewrites": n_rewrites, "n_qa": n_qa, "retriever": retriever, "passage_words": passage_words,
                "embedder": encoder[1] if encoder else None,
                "warmup_corpus": str(Path(warmup).resolve()) if warmup is not None else None,
                "training": config.to_dict()}
    if not retrain and len(store):
        _check_same_training(workdir / "config.json", settings, len(store))
    write_text_atomic(workdir / "config.json", json.dumps(settings, indent=1) + "\n")

    fitted = fit_documents(docs, tokenizer, max_passage_tokens(lm, tokenizer), corpus)
    write_jsonl_atomic(workdir / "corpus.jsonl",
                       [{"id": d.id, "text": d.text, **({"title": d.title} if d.title else {})} for d in fitted])
    write_indexes(fitted, workdir, retriever, encoder, progress)

    pending = [(doc, fit) for doc, fit in zip(docs, fitted) if not store.done(doc)]
    store.retain([d.id for d in docs])
    store.flush()
    start = time.perf_counter()
    # the augmentation cache is keyed by the text actually augmented
    to_augment = [dataclasses.replace(f, sha256=text_sha256(f.text)) for _, f in pending]
    if ray is not None and augment_model is not None:  # Ray workers augment with the trained model only
        augment_documents(to_augment, generator, workdir / "augment.jsonl", n_rewrites=n_rewrites, n_qa=n_qa)
    if ray is not None:
        from .distributed import encode_on_ray

        fallbacks = encode_on_ray(ray, pending, store, workdir / "augment.jsonl",
                                  cache_settings(generator, n_rewrites, n_qa), model=model, config=config,
                                  batch_docs=batch_docs, augmenter=augmenter, n_rewrites=n_rewrites, n_qa=n_qa,
                                  workers=workers, total=len(docs), progress=progress, warm=warm)
        store.close()
        return BuildSummary(len(docs), len(pending), fallbacks, time.perf_counter() - start, store.size_bytes())
    augs = augment_documents(to_augment, generator, workdir / "augment.jsonl", n_rewrites=n_rewrites, n_qa=n_qa)
    exit_after = int(os.environ.get(EXIT_AFTER_ENV, "0"))
    written = 0
    with tqdm(total=len(docs), initial=len(docs) - len(pending), desc="encode", unit="doc",
              disable=not progress) as bar:
        for start_g in range(0, len(pending), batch_docs):
            group = list(zip(pending, augs))[start_g:start_g + batch_docs]
            samples = [build_samples(fit.text, aug, tokenizer, config.construction) for (_, fit), aug in group]
            distill = ([distill_items(fit.text, aug, tokenizer) for (_, fit), aug in group]
                       if config.objective != "ntp" else None)
            try:
                params = train_documents(lm, tokenizer, samples, config, progress=progress,
                                         doc_keys=[text_sha256(fit.text) for (_, fit), _ in group],
                                         distill_per_doc=distill, base_docs=[warm] if warm is not None else [])
            except TrainingError as err:
                doc = group[err.doc][0][0]
                store.close()  # what was trained before stays
                raise BuildError(f"{corpus}:{_line_of(corpus, doc.id)}: document {doc.id!r} diverged ({err}); "
                                 f"nothing stored for it; lower --lr (now {config.lr:g})") from None
            for ((doc, _), _), p in zip(group, params):
                store.put(doc, p)
                written += 1
                if written == exit_after:
                    os._exit(17)
            store.flush()
            bar.set_postfix(loss=f"{sum(p.meta['losses'][-1] for p in params) / len(params):.3f}")
            bar.update(len(group))
    store.close()
    return BuildSummary(len(docs), len(pending), sum(a.source == "fallback" for a in augs),
                        time.perf_counter() - start, store.size_bytes())



def _digest(settings):
    """A short stable digest of a JSON-able dict (the augmentation settings in the training tag)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _check_same_training(config_path, settings, n_stored):
    """BuildError when W/config.json records another training tag than `settings` (a rebuild that would
    re-encode all `n_stored` documents), naming the settings that differ."""
    try:
        previous = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return  # no readable record of what the store holds: per-document tags still decide what is done
    if not isinstance(previous, dict) or previous.get("training") == settings["training"]:
        return
    changed = [f"{k} {previous.get(k)!r} → {v!r}" for k, v in settings.items()
               if k not in ("model", "training", "augmentation", "warmup") and previous.get(k) != v]
    why = (", ".join(changed) or "augmentation or warm-up" if "training" in previous else
           "by a prag too old to record its training settings in config.json")
    raise BuildError(f"{config_path.parent}: its {n_stored} stored documents were trained with other settings "
                     f"({why}); pass --retrain to encode them all again, or build into another --workdir")


def _warn_rank_above_width(lm, config):
    """A warning when the rank exceeds a target layer's smaller side: such a pair cannot use its extra rank."""
    width = min(min(lm.get_submodule(p).in_features, lm.get_submodule(p).out_features)
                for p in ffn_module_paths(lm, config.targets))
    if config.rank > width:
        warnings.warn(f"--rank {config.rank} is more than the narrowest target layer's width {width}: the pairs "
                      f"cannot use more than rank {width}", stacklevel=3)


def _warmup_pair(lm, tokenizer, docs, generator, workdir, config, n_rewrites, n_qa, progress):
    """The warm-up pair of `docs`: W/warmup.safetensors when it matches (same key), else the one shipped for
    the embedded model when it matches (same key and model), else trained; saved in W either way."""
    key = warmup_key(corpus_sha256(docs), cache_settings(generator, n_rewrites, n_qa), config)
    path = workdir / WARMUP_FILE
    for candidate in (path, TRAINED_WARMUP):
        if not candidate.is_file():
            continue
        try:
            warm = DocParams.load(candidate, fingerprint=model_fingerprint(lm), device=lm.device)
        except DocParamsError as err:
            if candidate == path:
                warnings.warn(f"{err}; training the warm-up pair again", stacklevel=2)
            continue
        if warm.meta.get("warmup_key") == key:
            if candidate != path:
                warm.save(path)
            return warm
    augs = augment_documents(docs, generator, workdir / "augment.jsonl", n_rewrites=n_rewrites, n_qa=n_qa)
    samples = [seq for doc, aug in zip(docs, augs) for seq in build_samples(doc.text, aug, tokenizer, config.construction)]
    warm = train_warmup(lm, tokenizer, samples, config, key, progress=progress)
    warm.save(path)
    return warm

"""`prag build --ray`: augmentation and training spread over a Ray cluster.

Imported only when --ray is given (Ray is the optional extra `pip install prag[ray]`).

The driver (the `prag build` process) does every write. It splits the pending documents
into batches of `batch_docs`, in corpus order (the batches of the single-process build,
hence the same pairs), and hands them to Ray actors. An actor loads the model once; per
batch it augments what the cache lacks, trains the batch's documents together
(train.train_documents) and returns the augmentations and the pairs, in the store's
dtype. As each batch comes back, the driver writes it into the augmentation cache and
the store (the same atomic writes as without Ray) and advances one progress bar over the
corpus. Workers thus need the model at the same path (or the embedded one) and no shared
storage; the store is written by one process.

Failures. An actor that dies (killed, out of memory, node lost) is restarted by Ray
(max_restarts), which reloads the model and re-runs its batch (max_task_retries): a batch
is written once, when its result arrives, so nothing finished is lost and nothing is
written twice. A Python exception in a batch is not retried: the build stops with it;
what was written stays, and re-running resumes.

Placement: one actor per GPU (num_gpus=1) when the cluster has GPUs, else one per CPU
(num_cpus=1, so torch uses one thread); `workers` asks for fewer.
"""
import logging
import os

import ray
from ray.exceptions import RayActorError, RayTaskError
from tqdm.auto import tqdm

from .augment import AugmentCache, LMGenerator, augment_many
from .corpus import text_sha256
from .doc_params import FINGERPRINT_FIELDS, model_fingerprint
from .errors import BuildError
from .inject import inject
from .model import load_model
from .samples import build_samples, distill_items
from .train import DTYPES, train_documents

RESTARTS = 3  # per actor, and retries per batch
# Test hook: a marker file path; the first actor to create it dies (os._exit) mid-batch, after training.
FAIL_ONCE_ENV = "PRAG_RAY_FAIL_ONCE"


class _Encoder:
    """One worker: the model, loaded once, and the batches it is given."""

    def __init__(self, model, config, augmenter, n_rewrites, n_qa, storage_dtype, fingerprint, warm):
        device = "cuda" if ray.get_gpu_ids() else "cpu"
        self.lm, self.tokenizer = load_model(model, dtype=DTYPES[config.dtype], device=device)
        inject(self.lm)
        mine = model_fingerprint(self.lm)
        for key in FINGERPRINT_FIELDS:
            if mine.get(key) != fingerprint.get(key):
                raise BuildError(f"worker on {ray.util.get_node_ip_address()}: its model {model!r} differs from "
                                 f"the driver's (fingerprint.{key}); every node needs the same model files")
        self.generator = LMGenerator(self.lm, self.tokenizer) if augmenter == "model" else None
        self.config, self.n_rewrites, self.n_qa, self.storage_dtype = config, n_rewrites, n_qa, storage_dtype
        self.base_docs = [warm.to(self.lm.device)] if warm is not None else []  # the driver's warm-up pair

    def encode(self, texts, augs):
        """(augmentations, DocParams) for a batch of texts; augs: the cached Augmentation or None for each."""
        missing = [i for i, aug in enumerate(augs) if aug is None]
        augs = list(augs)
        for i, aug in zip(missing, augment_many([texts[i] for i in missing], self.generator, self.n_rewrites,
                                                self.n_qa)):
            augs[i] = aug
        samples = [build_samples(text, aug, self.tokenizer, self.config.construction) for text, aug in zip(texts, augs)]
        distill = ([distill_items(text, aug, self.tokenizer) for text, aug in zip(texts, augs)]
                   if self.config.objective != "ntp" else None)
        params = train_documents(self.lm, self.tokenizer, samples, self.config, progress=False,
                                 doc_keys=[text_sha256(text) for text in texts], distill_per_doc=distill,
                                 base_docs=self.base_docs)
        marker = os.environ.get(FAIL_ONCE_ENV)
        if marker:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
                os._exit(1)
            except FileExistsError:
                pass
        return augs, [p.to("cpu", self.storage_dtype) for p in params]


def encode_on_ray(address, pending, store, cache_path, cache_settings, *, model, config, batch_docs, augmenter,
                  n_rewrites, n_qa, workers=None, total=None, progress=True, warm=None):
    """Augment and train `pending` ((document, fitted document) pairs) on the Ray cluster at `address`
    ("" or None: a local cluster, or RAY_ADDRESS), writing each batch into `store` and the augmentation
    cache as it arrives; `warm` (the warm-up pair, trained by the driver) is active beside every document.
    Returns the number of documents whose augmentation used the fallback."""
    if not pending:
        return 0
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address or None, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
        except (ConnectionError, ValueError, RuntimeError) as err:
            raise BuildError(f"ray: cannot reach a cluster at {address!r} ({err})") from None
    actors = []
    try:
        actors = _start_workers(workers, model, config, augmenter, n_rewrites, n_qa, store, warm)
        return _run(actors, pending, store, AugmentCache(cache_path, cache_settings), batch_docs, total, progress)
    finally:
        for actor in actors:
            ray.kill(actor)
        if started:
            ray.shutdown()


def _start_workers(workers, model, config, augmenter, n_rewrites, n_qa, store, warm):
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    capacity = gpus or cpus
    if workers is not None and not 1 <= workers <= capacity:
        raise BuildError(f"workers: {workers}, but the cluster has {capacity} {'GPU' if gpus else 'CPU'}(s)")
    options = dict(num_gpus=1 if gpus else 0, num_cpus=1, max_restarts=RESTARTS, max_task_retries=RESTARTS)
    if os.environ.get(FAIL_ONCE_ENV):
        options["runtime_env"] = {"env_vars": {FAIL_ONCE_ENV: os.environ[FAIL_ONCE_ENV]}}
    encoder = ray.remote(_Encoder).options(**options)
    storage_dtype = DTYPES[store.storage_dtype]
    warm = warm.to("cpu") if warm is not None else None
    return [encoder.remote(model, config, augmenter, n_rewrites, n_qa, storage_dtype, store.fingerprint, warm)
            for _ in range(workers or capacity)]


def _run(actors, pending, store, cache, batch_docs, total, progress):
    batches = [pending[i:i + batch_docs] for i in range(0, len(pending), batch_docs)]
    batches.reverse()  # pop() hands them out in corpus order
    running, fallbacks = {}, 0

    def submit(actor):
        batch = batches.pop()
        texts = [fit.text for _, fit in batch]
        running[actor.encode.remote(texts, [cache.get(text_sha256(t)) for t in texts])] = (actor, batch)

    for actor in actors[:len(batches)]:
        submit(actor)
    total = total if total is not None else len(pending)
    with tqdm(total=total, initial=total - len(pending), desc="encode", unit="doc", disable=not progress) as bar:
        while running:
            [ref], _ = ray.wait(list(running), num_returns=1)
            actor, batch = running.pop(ref)
            try:
                augs, params = ray.get(ref)
            except RayTaskError as err:
                raise BuildError(f"batch {[doc.id for doc, _ in batch]}: {err.cause!r}") from None
            except RayActorError as err:
                raise BuildError(f"a Ray worker died {RESTARTS + 1} times (batch {[doc.id for doc, _ in batch]}): "
                                 f"{str(err).splitlines()[0]}") from None
            for (doc, fit), aug, p in zip(batch, augs, params):
                if cache.get(text_sha256(fit.text)) is None:
                    cache.put(text_sha256(fit.text), aug)
                store.put(doc, p)
            store.flush()
            fallbacks += sum(aug.source == "fallback" for aug in augs)
            bar.set_postfix(loss=f"{sum(p.meta['losses'][-1] for p in params) / len(params):.3f}")
            bar.update(len(batch))
            if batches:
                submit(actor)
    return fallbacks

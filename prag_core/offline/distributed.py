"""`prag build --ray`: augmentation and training spread over a Ray cluster.

Imported only when --ray is given (Ray is the optional extra `pip install prag[ray]`).

The driver (the `prag build` process) does every write. It splits the pending documents
into batches of `batch_docs`, in corpus order (the batches of the single-process build,
hence the same pairs), and hands them to Ray actors. An actor loads the model once; per
batch it augments what the cache lacks, trains the batch's documents together
(encode.encode) and returns the augmentations and the pairs, in the store's
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

import ray
from ray.exceptions import RayActorError, RayTaskError
from tqdm.auto import tqdm

from prag_core.corpus import text_sha256
from prag_core.errors import BuildError
from prag_core.model.inject import inject
from prag_core.model.load import load_model
from prag_core.offline.augment import AugmentCache, LMGenerator, augment_many, cache_settings
from prag_core.offline.encode import encode
from prag_core.offline.train import DTYPES
from prag_core.pairs.doc_params import FINGERPRINT_FIELDS, model_fingerprint

RESTARTS = 3  # per actor, and retries per batch


class _Encoder:
    """One worker: the model, loaded once, and the batches it is given."""

    def __init__(self, model, config, augmenter, n_rewrites, n_qa, storage_dtype, fingerprint, warm):
        device = "cuda" if ray.get_gpu_ids() else "cpu"
        self.lm, self.tokenizer = load_model(model, dtype=DTYPES[config.dtype], device=device)
        inject(self.lm)
        mine = model_fingerprint(self.lm)
        for key in FINGERPRINT_FIELDS:
            if mine.get(key) != fingerprint.get(key):
                raise BuildError(
                    f"worker on {ray.util.get_node_ip_address()}: its model {model!r} differs from "
                    f"the driver's (fingerprint.{key}); every node needs the same model files"
                )
        self.generator = LMGenerator(self.lm, self.tokenizer) if augmenter == "model" else None
        self.config, self.n_rewrites, self.n_qa, self.storage_dtype = config, n_rewrites, n_qa, storage_dtype
        self.warm = warm.to(self.lm.device) if warm is not None else None  # the driver's warm-up pair

    def encode(self, texts, augs):
        """(augmentations, DocParams) for a batch of texts; augs: the cached Augmentation or None for each."""
        missing = [i for i, aug in enumerate(augs) if aug is None]
        augs = list(augs)
        for i, aug in zip(
            missing, augment_many([texts[i] for i in missing], self.generator, self.n_rewrites, self.n_qa)
        ):
            augs[i] = aug
        params = encode(self.lm, self.tokenizer, texts, augs, self.config, self.warm)
        return augs, [p.to("cpu", self.storage_dtype) for p in params]


def encode_on_ray(plan):
    """Augment and train the plan's pending documents on the Ray cluster at plan.options.ray ("": a local
    cluster, or RAY_ADDRESS), writing each batch into the store and the augmentation cache as it arrives; the
    warm-up pair (trained by the driver) is active beside every document. Returns the number of documents
    whose augmentation used the fallback."""
    if not plan.pending:
        return 0
    options = plan.options
    if options.augment_model is not None:  # workers augment with the trained model only: the driver does it
        plan.augment([fit for _, fit in plan.pending])
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(
                address=options.ray or None, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING
            )
        except (ConnectionError, ValueError, RuntimeError) as err:
            raise BuildError(f"ray: cannot reach a cluster at {options.ray!r} ({err})") from None
    actors = []
    try:
        actors = _start_workers(plan)
        cache = AugmentCache(
            plan.workdir.augmentations, cache_settings(plan.generator, options.n_rewrites, options.n_qa)
        )
        return _run(actors, plan, cache)
    finally:
        for actor in actors:
            ray.kill(actor)
        if started:
            ray.shutdown()


def _start_workers(plan):
    options = plan.options
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    capacity = gpus or cpus
    if options.workers is not None and not 1 <= options.workers <= capacity:
        raise BuildError(f"workers: {options.workers}, but the cluster has {capacity} {'GPU' if gpus else 'CPU'}(s)")
    encoder = ray.remote(_Encoder).options(
        num_gpus=1 if gpus else 0, num_cpus=1, max_restarts=RESTARTS, max_task_retries=RESTARTS
    )
    storage_dtype = DTYPES[plan.store.storage_dtype]
    warm = plan.warm.to("cpu") if plan.warm is not None else None
    return [
        encoder.remote(
            plan.model_name,
            plan.config,
            options.augmenter,
            options.n_rewrites,
            options.n_qa,
            storage_dtype,
            plan.store.fingerprint,
            warm,
        )
        for _ in range(options.workers or capacity)
    ]


def _run(actors, plan, cache):
    pending, store = plan.pending, plan.store
    batch_docs = plan.options.batch_docs
    batches = [pending[i : i + batch_docs] for i in range(0, len(pending), batch_docs)]
    batches.reverse()  # pop() hands them out in corpus order
    running, fallbacks = {}, 0

    def submit(actor):
        batch = batches.pop()
        texts = [fit.text for _, fit in batch]
        running[actor.encode.remote(texts, [cache.get(text_sha256(t)) for t in texts])] = (actor, batch)

    for actor in actors[: len(batches)]:
        submit(actor)
    total = plan.total
    with tqdm(
        total=total, initial=total - len(pending), desc="encode", unit="doc", disable=not plan.options.progress
    ) as bar:
        while running:
            [ref], _ = ray.wait(list(running), num_returns=1)
            actor, batch = running.pop(ref)
            try:
                augs, params = ray.get(ref)
            except RayTaskError as err:
                raise BuildError(f"batch {[doc.id for doc, _ in batch]}: {err.cause!r}") from None
            except RayActorError as err:
                raise BuildError(
                    f"a Ray worker died {RESTARTS + 1} times (batch {[doc.id for doc, _ in batch]}): "
                    f"{str(err).splitlines()[0]}"
                ) from None
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

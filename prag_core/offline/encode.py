"""The encode step, written once: documents and their augmentations -> trained pairs.

`prag build` in one process (offline/build.py), its Ray workers (offline/distributed.py) and the sweeps in
bench/ call encode(); the warm-up pair trains through encode_warmup(). Nothing else calls the training loop
(train.train_documents). A document's pairs depend on its text, its augmentation, the training config and the
warm-up pair, and on nothing else: under config.init "document" its B is seeded by the text's sha256, so a
document gets the same pairs in any batch, on any worker.
"""

import dataclasses

from prag_core.corpus import text_sha256
from prag_core.offline.samples import build_samples, distill_items
from prag_core.offline.train import train_documents

WARMUP_BATCH = 8  # warm-up sequences per step (one pair over the whole warm-up corpus)


def encode(model, tokenizer, texts, augmentations, config, warm=None, progress=False):
    """One trained DocParams per text, trained together: its sequences (samples.build_samples of its
    augmentation, and distillation items when config.objective asks) with the warm-up pair `warm` (or None)
    frozen beside it. Raises train.TrainingError naming the position of a document that diverged."""
    samples = [build_samples(text, aug, tokenizer, config.construction) for text, aug in zip(texts, augmentations)]
    distill = (
        [distill_items(text, aug, tokenizer) for text, aug in zip(texts, augmentations)]
        if config.objective != "ntp"
        else None
    )
    return train_documents(
        model,
        tokenizer,
        samples,
        config,
        progress=progress,
        doc_keys=[text_sha256(text) for text in texts],
        distill_per_doc=distill,
        base_docs=[warm] if warm is not None else [],
    )


def encode_warmup(model, tokenizer, texts, augmentations, config, key, progress=False):
    """The warm-up pair: one pair (B from the shared init, next-token loss) trained on the sequences of every
    text, WARMUP_BATCH per step, config.epochs passes; its meta records `warmup_key` = key."""
    samples = [
        seq
        for text, aug in zip(texts, augmentations)
        for seq in build_samples(text, aug, tokenizer, config.construction)
    ]
    if not samples:
        raise ValueError("the warm-up corpus gave no training sequences")
    config = dataclasses.replace(config, init="shared", objective="ntp")
    [warm] = train_documents(
        model, tokenizer, [samples], config, progress=progress, batch_size=WARMUP_BATCH, desc="warm-up pair"
    )
    warm.meta["warmup_key"] = key
    return warm

"""Suite 4, offline cost per document (PRAG's steps 1 and 2) on the embedded SmolLM2 and the demo corpus.

augment    n=1 rewrite + m=3 QA pairs per document, written by the model (augment_many, one batch)
train      one epoch over each document's PRAG sequences, G documents per batch: G documents in one
           batch for G > 1, two documents one after the other for G = 1; the sequences come from
           the deterministic augmenter, so every configuration trains on the same kind of tokens
reference  the PRAG reference recipe's shape of work on the same model: batch 1, each sequence
           padded to 3000 tokens (loss on every position); a few steps, extrapolated per document
store      one document's pairs saved as safetensors: bytes on disk and time to save
"""

from functools import lru_cache

import pytest
from common import ALPHA, RANK, SMOKE, rounds, tiny_llama, tiny_tokenizer

from prag_core.corpus import DEMO_CORPUS, read_corpus
from prag_core.offline.augment import Augmentation, LMGenerator, augment_many, fallback_qa, fallback_rewrites
from prag_core.offline.encode import encode
from prag_core.offline.samples import build_samples
from prag_core.offline.train import train_documents
from prag_core.offline.train_config import TrainConfig
from prag_core.pairs.doc_params import DocParams

GROUPS = (1, 2) if SMOKE else (1, 4, 8)
N_AUGMENT = 1 if SMOKE else 4
AUGMENT_RETRIES = 0 if SMOKE else 2
PAD_TO = 1024 if SMOKE else 3000  # the PRAG reference pads every sequence to 3000 tokens
REFERENCE_STEPS = 1  # one 3000-token step takes about a minute on one CPU thread
CONFIG = TrainConfig(rank=RANK, alpha=ALPHA, epochs=1)


@lru_cache(maxsize=1)
def setting():
    """(model name, model, tokenizer, documents, their fallback augmentations)."""
    if SMOKE:
        name, model, tokenizer = "tiny random Llama", tiny_llama(), tiny_tokenizer()
    else:
        from prag_core.model.load import load_model

        name, (model, tokenizer) = "SmolLM2-135M", load_model(None)
    docs = read_corpus(DEMO_CORPUS)[: max(*GROUPS, N_AUGMENT)]
    augs = [Augmentation(fallback_rewrites(d.text, 1), fallback_qa(d.text, 3), "fallback", 0) for d in docs]
    encode(model, tokenizer, [docs[0].text], augs[:1], CONFIG)  # first-call costs
    return name, model, tokenizer, docs, augs


def describe(benchmark, kind, **fields):
    """Group and label a benchmark (call before timing: pytest-benchmark reads the group then)."""
    name, *_ = setting()
    benchmark.group = f"offline {kind}"
    benchmark.extra_info.update(suite="offline", kind=kind, model=name, **fields)


def test_augment(benchmark):
    name, model, tokenizer, docs, _ = setting()
    texts = [d.text[:200] if SMOKE else d.text for d in docs[:N_AUGMENT]]  # smoke: short texts, short replies
    generator = LMGenerator(model, tokenizer, batch_size=N_AUGMENT)
    describe(benchmark, "augment", docs=len(texts), n_rewrites=1, n_qa=3, retries=AUGMENT_RETRIES)
    result = benchmark.pedantic(augment_many, (texts, generator, 1, 3, AUGMENT_RETRIES), rounds=1)
    benchmark.extra_info["fallbacks"] = sum(a.source == "fallback" for a in result)


@pytest.mark.parametrize("group", GROUPS, ids=[f"G{g}" for g in GROUPS])
def test_train(benchmark, group):
    _, model, tokenizer, docs, augs = setting()
    texts, augs = [d.text for d in docs[: max(group, 2)]], augs[: max(group, 2)]

    def train_all():
        for start in range(0, len(texts), group):
            encode(model, tokenizer, texts[start : start + group], augs[start : start + group], CONFIG)

    samples = [build_samples(text, aug, tokenizer) for text, aug in zip(texts, augs)]
    seqs = [s for doc in samples for s in doc]
    describe(
        benchmark,
        "train",
        group=group,
        docs=len(samples),
        rank=RANK,
        default_epochs=TrainConfig().epochs,
        sequences_per_doc=len(seqs) / len(samples),
        mean_tokens=sum(map(len, seqs)) / len(seqs),
    )
    benchmark.pedantic(train_all, rounds=1)


def test_reference(benchmark):
    """The training loop itself on PRAG's reference setting (sequences padded to a fixed length): the one place
    besides encode() that calls train_documents, as it times the loop, not the encode step."""
    _, model, tokenizer, docs, augs = setting()
    samples = [build_samples(docs[0].text, augs[0], tokenizer)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    padded = [seq + [pad] * (PAD_TO - len(seq)) for seq in samples[0][:REFERENCE_STEPS]]
    reference = TrainConfig(rank=RANK, alpha=ALPHA, lr=3e-4, epochs=1)
    describe(benchmark, "reference", pad_to=PAD_TO, steps=len(padded), sequences_per_doc=len(samples[0]))
    # padded ids passed as plain sequences: every position is a real token, a target, and computed
    benchmark.pedantic(train_documents, (model, tokenizer, [padded], reference), {"progress": False}, rounds=1)


def test_store(benchmark, tmp_path):
    _, model, *_ = setting()
    doc = DocParams.init(model, RANK, ALPHA)
    path = tmp_path / "doc.safetensors"
    describe(
        benchmark,
        "store",
        rank=RANK,
        projections=len(doc.pairs),
        dtype=str(next(iter(doc.pairs.values()))[0].dtype).removeprefix("torch."),
    )
    benchmark.pedantic(doc.save, (path,), rounds=rounds(5))
    benchmark.extra_info["bytes"] = path.stat().st_size

"""The warm-up pair (PRAG's `warmup_lora.py`, which its own encode step never loads; here it is used).

One pair set (A_w, B_w) is trained, with next-token loss, on the training sequences of a warm-up corpus:
documents that are not in the knowledge base (the shipped WARMUP_CORPUS is invented and disjoint from the
demo and bench sets). It learns what every document's pair would otherwise learn again: the answer format,
and answering from parameters with no passage in the prompt.

Counted once. Every document's pair trains with the warm-up active beside it (frozen, weight 1), and
serving activates it once per question, weight 1, beside the retrieved documents however they combine:

    ΔW = α·A_w B_wᵀ + Σ_j w_j·α·A_j B_jᵀ        (or + α·Ā B̄ᵀ for dyprag)

so each document is stored as its own pair on top of the warm-up, and the warm-up is never counted k
times. `key` (a sha256 of the warm-up corpus, its augmentation and the training config) identifies it:
it is part of every document's training config, so a new warm-up re-encodes the store.
"""
import hashlib
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .doc_params import DocParams
from .inject import inject, use_documents
from .train import DTYPES, _batch, per_row_loss

WARMUP_CORPUS = Path(__file__).parent / "data" / "warmup_corpus.jsonl"
# The pair trained from WARMUP_CORPUS for the embedded SmolLM2 with the default settings (bench/sweep.py wrote
# it): builds whose warm-up key and model match use it instead of training the same pair again (~200 s).
TRAINED_WARMUP = Path(__file__).parent / "data" / "warmup_smollm2.safetensors"
FILE = "warmup.safetensors"  # in the work directory


def warmup_key(corpus_hash, augment_settings, config):
    """The identity of a warm-up pair: what it is trained from and how."""
    train = {k: v for k, v in config.to_dict().items() if k not in ("warmup", "objective", "init", "augmentation")}  # ntp, shared
    blob = json.dumps([corpus_hash, augment_settings, train], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def train_warmup(model, tokenizer, samples, config, key, batch_size=8, progress=True):
    """One DocParams trained on every sequence of `samples` (token id lists of all warm-up documents), in
    batches of `batch_size`, config.epochs passes; meta records `warmup_key` = key and the loss per epoch."""
    if not samples:
        raise ValueError("the warm-up corpus gave no training sequences")
    inject(model).requires_grad_(False)
    device = next(model.parameters()).device
    warm = DocParams.init(model, config.rank, config.alpha, config.targets, config.seed, DTYPES[config.dtype],
                          meta={"training": config.to_dict(), "warmup_key": key})
    optimizer = torch.optim.AdamW(warm.tensors(), lr=config.lr, weight_decay=0.0)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = [samples[i:i + batch_size] for i in range(0, len(samples), batch_size)]
    losses = []
    with tqdm(total=config.epochs * len(batches), desc="warm-up pair", unit="step", leave=False,
              disable=not progress) as bar:
        for _ in range(config.epochs):
            total = 0.0
            for batch in batches:
                ids, mask = _batch(batch, pad_id, device)
                with use_documents(model, [warm]):
                    loss = per_row_loss(model(input_ids=ids, attention_mask=mask).logits, ids, mask).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
                bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update()
            losses.append(round(total / len(samples), 5))
    return DocParams({p: (a.detach(), b.detach()) for p, (a, b) in warm.pairs.items()}, warm.alpha,
                     {**warm.meta, "losses": losses})

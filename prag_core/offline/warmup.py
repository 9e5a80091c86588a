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
import warnings

from prag_core.corpus import DATA, corpus_sha256
from prag_core.offline.augment import augment_documents, cache_settings
from prag_core.offline.encode import encode_warmup
from prag_core.pairs.doc_params import DocParams, DocParamsError, model_fingerprint

WARMUP_CORPUS = DATA / "warmup_corpus.jsonl"
# The pair trained from WARMUP_CORPUS for the embedded SmolLM2 with the default settings (bench/experiments/sweep.py
# wrote it): builds whose warm-up key and model match use it instead of training the same pair again (~200 s).
TRAINED_WARMUP = DATA / "warmup_smollm2.safetensors"


def warmup_key(corpus_hash, augment_settings, config):
    """The identity of a warm-up pair: what it is trained from and how."""
    train = {k: v for k, v in config.to_dict().items() if k not in ("warmup", "objective", "init", "augmentation")}
    blob = json.dumps([corpus_hash, augment_settings, train], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def warmup_pair(model, tokenizer, docs, generator, config, path, augment_path, n_rewrites=1, n_qa=3, progress=True):
    """The warm-up pair of `docs` for `config`: the one at `path` when its key matches, else the shipped one
    (TRAINED_WARMUP) when its key and model match, else trained (augmenting into the cache at augment_path);
    saved at `path` either way."""
    key = warmup_key(corpus_sha256(docs), cache_settings(generator, n_rewrites, n_qa), config)
    for candidate in (path, TRAINED_WARMUP):
        if not candidate.is_file():
            continue
        try:
            warm = DocParams.load(candidate, fingerprint=model_fingerprint(model), device=model.device)
        except DocParamsError as err:
            if candidate == path:
                warnings.warn(f"{err}; training the warm-up pair again", stacklevel=2)
            continue
        if warm.meta.get("warmup_key") == key:
            if candidate != path:
                warm.save(path)
            return warm
    augs = augment_documents(docs, generator, augment_path, n_rewrites=n_rewrites, n_qa=n_qa)
    warm = encode_warmup(model, tokenizer, [d.text for d in docs], augs, config, key, progress=progress)
    warm.save(path)
    return warm

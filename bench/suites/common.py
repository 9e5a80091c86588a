"""What the suites share: smoke mode, thread pinning, shapes, models and documents to time.

PRAG_BENCH_SMOKE=1   tiny shapes and models, one round each (CI runs this so the suites cannot rot)
PRAG_BENCH_THREADS   torch threads for every suite (default: all cores); pinned once, in conftest

Shapes are (hidden, intermediate, layers) of the real models. Random models of the
large shapes keep the FFN shape but only a few layers (LAYERS_USED), so they fit
in memory and CPU time; per-layer costs are reported next to the totals.
"""

import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))  # tests/tiny.py: random models and documents, shared with the tests
from tiny import random_doc_params, tiny_llama, tiny_tokenizer  # noqa: E402

SMOKE = os.environ.get("PRAG_BENCH_SMOKE") == "1"
THREADS = int(os.environ.get("PRAG_BENCH_THREADS") or os.cpu_count())

# name -> (hidden, intermediate, layers of the real model)
FULL_SHAPES = {"SmolLM2-135M": (576, 1536, 30), "Llama-3.2-1B": (2048, 8192, 16), "Llama-3-8B": (4096, 14336, 32)}
SMOKE_SHAPES = {"tiny-a": (32, 48, 2), "tiny-b": (64, 96, 2)}
SHAPES = SMOKE_SHAPES if SMOKE else FULL_SHAPES
# layers actually built for the random models of the large shapes (time and memory on a small CPU box)
LAYERS_USED = {"Llama-3.2-1B": 4, "Llama-3-8B": 2, "tiny-a": 2, "tiny-b": 2}
RANDOM_VOCAB = 32000  # random models: a Llama-2-sized vocabulary, not Llama-3's 128k (the lm_head is not what we time)
PROMPT_TOKENS = 48  # prompt length for random models (about SmolLM2's question prompt)

RANK = 2
ALPHA = 16.0  # the PRAG reference: rank 2, lora_alpha 32 -> α = 16 per document


def rounds(full):
    """Timed rounds of a slow (seconds-long) benchmark: `full`, or 1 in smoke mode."""
    return 1 if SMOKE else full


def build_model(shape):
    """(injected model, prompt ids (1, T)) for a SHAPES entry: for SmolLM2-135M the embedded model and a real
    question prompt; for the others a random Llama with that FFN shape, LAYERS_USED layers and random ids."""
    from prag_core.model.inject import inject

    if shape == "SmolLM2-135M":
        from prag_core.model.load import load_model
        from prag_core.prompts import ANSWER_PREFIX, qa_messages, render

        model, tokenizer = load_model(None)
        text = render(tokenizer, qa_messages("In what year did the Orlan Bridge open?")) + ANSWER_PREFIX
        return inject(model), tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    hidden, intermediate, _ = SHAPES[shape]
    vocab = len(tiny_tokenizer()) if SMOKE else RANDOM_VOCAB
    model = tiny_llama(seed=0, layers=LAYERS_USED[shape], hidden=hidden, intermediate=intermediate, vocab=vocab)
    prompt = torch.randint(3, vocab, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(0))
    return inject(model), prompt


def documents(model, n, seed=0):
    """n random rank-RANK documents (α = ALPHA) for every FFN projection of `model`."""
    return random_doc_params(model, n, seed=seed, rank=RANK, alpha=ALPHA)


def ffn_params_per_layer(shape):
    hidden, intermediate, _ = SHAPES[shape]
    return 3 * hidden * intermediate


def interleave(benchmark, variants, rounds, warmup_rounds=0):
    """Time several variants of one job in alternation, so a busy neighbour slows them alike.

    variants: {name: (fields, fn)}; fn(k) runs the variant once for round k. Every round runs each
    variant once, in an order rotated by one place per round. Each variant's seconds per round go to
    benchmark.extra_info["variants"][name] = {**fields, "samples": [...]} (warm-up rounds left out),
    so the report can take per-variant medians and paired per-round ratios. The benchmark's own
    statistics time whole rounds. `fields` is read after the runs, so fn may add to it."""
    names = list(variants)
    samples = {name: [] for name in names}
    count = iter(range(rounds + warmup_rounds))

    def one_round():
        k = next(count)
        for name in names[k % len(names) :] + names[: k % len(names)]:
            start = time.perf_counter()
            variants[name][1](k)
            samples[name].append(time.perf_counter() - start)

    benchmark.pedantic(one_round, rounds=rounds, warmup_rounds=warmup_rounds)
    benchmark.extra_info["variants"] = {
        name: {**fields, "samples": samples[name][warmup_rounds:]} for name, (fields, _) in variants.items()
    }

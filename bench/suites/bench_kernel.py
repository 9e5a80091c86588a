"""Suite 1, kernel: one FFN projection (hidden -> intermediate, the gate/up shape) on the CPU.

Providers, for x (M, in), W (out, in), D documents of rank 2 stacked as A (D, out, 2), B (D, in, 2),
and A_cat (out, 2D), B_cat (in, 2D) the same documents side by side along rank (built beforehand):
    base     F.linear(x, W)                                       the projection alone, no documents
    fused    prag_kernels.fused_lora_linear(x, W, None, A, B, α)  the public op
    cat      prag_kernels.fused_lora_linear_cat(x, W, None, A_cat, B_cat, α)  its entry for cached stacks
    unfused  F.linear(x, W) + α·(x B_cat) A_catᵀ                  separate torch ops
These are bench/gpu/kernel_report.py's providers less merge, which suite 2 times per model. They run
interleaved (common.interleave): each round calls every provider n times in a row (n calibrated so
the base takes about 10 ms per round), and the samples are seconds per call. The GPU counterpart is
bench/gpu/kernel_report.py (CUDA events and graphs), which run_all.py runs when a GPU is present.
"""

import time
from functools import lru_cache

import pytest
import torch
import torch.nn.functional as F
from common import ALPHA, RANK, SHAPES, SMOKE, interleave

from prag_kernels import fused_lora_linear, fused_lora_linear_cat

MS = (1, 8) if SMOKE else (1, 8, 64, 512)
DOCS = (1, 3) if SMOKE else (1, 3, 8)
CASES = [(shape, m, docs) for shape in SHAPES for m in MS for docs in DOCS]  # shape by shape


@lru_cache(maxsize=1)  # one shape's weight alive at a time; tests are ordered shape by shape
def weight(shape):
    hidden, intermediate, _ = SHAPES[shape]
    return torch.randn(intermediate, hidden, generator=torch.Generator().manual_seed(0)) / hidden**0.5


def operands(shape, m, docs):
    w = weight(shape)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(m, w.shape[1], generator=gen)
    lora_a = torch.randn(docs, w.shape[0], RANK, generator=gen) * 0.02
    lora_b = torch.randn(docs, w.shape[1], RANK, generator=gen) * 0.02
    return x, w, lora_a, lora_b, torch.cat(lora_a.unbind(0), dim=1), torch.cat(lora_b.unbind(0), dim=1)


PROVIDERS = {
    "base": lambda x, w, a, b, a_cat, b_cat: F.linear(x, w),
    "fused": lambda x, w, a, b, a_cat, b_cat: fused_lora_linear(x, w, None, a, b, ALPHA),
    "cat": lambda x, w, a, b, a_cat, b_cat: fused_lora_linear_cat(x, w, None, a_cat, b_cat, ALPHA),
    "unfused": lambda x, w, a, b, a_cat, b_cat: F.linear(x, w) + ALPHA * ((x @ b_cat) @ a_cat.T),
}
ROUND_S = 0.01  # target seconds of base calls per round: enough calls to dwarf the timer's overhead
BUDGET_S = 2.0  # target seconds per benchmark, which sets the rounds (between 5 and 15)


def seconds(call):
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


@pytest.mark.parametrize("shape,m,docs", CASES, ids=[f"{s}-M{m}-{d}docs" for s, m, d in CASES])
def test_kernel(benchmark, shape, m, docs):
    args = operands(shape, m, docs)
    x, w = args[:2]
    calls = {p: (lambda fn=fn: fn(*args)) for p, fn in PROVIDERS.items()}

    def variant(provider, n):
        def run(_):
            for _ in range(n):
                calls[provider]()

        return {"provider": provider}, run

    benchmark.group = f"kernel {shape} M={m}"
    with torch.inference_mode():
        for call in calls.values():
            call()  # warm-up
        once = {p: seconds(c) for p, c in calls.items()}
        n = max(1, round(ROUND_S / max(once["base"], 1e-7)))
        full = max(5, min(15, int(BUDGET_S / (n * sum(once.values())))))
        benchmark.extra_info.update(
            suite="kernel",
            shape=shape,
            m=m,
            docs=docs,
            rank=RANK,
            calls_per_round=n,
            in_features=w.shape[1],
            out_features=w.shape[0],
        )
        interleave(benchmark, {p: variant(p, n) for p in PROVIDERS}, rounds=1 if SMOKE else full, warmup_rounds=1)
    for v in benchmark.extra_info["variants"].values():
        v["samples"] = [t / n for t in v["samples"]]  # seconds per call

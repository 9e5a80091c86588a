"""Suite 1, kernel: one FFN projection (hidden -> intermediate, the gate/up shape) on the CPU.

Providers, for x (M, in), W (out, in), D documents of rank 2 stacked as A (D, out, 2), B (D, in, 2):
    base     F.linear(x, W)                                  the projection alone, no documents
    fused    prag_kernels.fused_lora_linear(x, W, None, A, B, α)
    unfused  F.linear(x, W) + α·(x B_cat) A_catᵀ             three separate ops, B_cat/A_cat built per call
The GPU counterpart is bench/gpu_kernels.py (CUDA events), which run_all.py runs when a GPU is present.
"""
from functools import lru_cache

import pytest
import torch
import torch.nn.functional as F

from common import ALPHA, RANK, SHAPES, SMOKE
from prag_kernels import fused_lora_linear

MS = (1, 8) if SMOKE else (1, 8, 64, 512)
DOCS = (1, 3) if SMOKE else (1, 3, 8)
CASES = [("base", 0)] + [(p, d) for p in ("fused", "unfused") for d in DOCS]


@lru_cache(maxsize=1)  # one shape's weight alive at a time; tests are ordered shape by shape
def weight(shape):
    hidden, intermediate, _ = SHAPES[shape]
    return torch.randn(intermediate, hidden, generator=torch.Generator().manual_seed(0)) / hidden ** 0.5


def operands(shape, m, docs):
    w = weight(shape)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(m, w.shape[1], generator=gen)
    lora_a = torch.randn(docs, w.shape[0], RANK, generator=gen) * 0.02
    lora_b = torch.randn(docs, w.shape[1], RANK, generator=gen) * 0.02
    return x, w, lora_a, lora_b


def unfused(x, w, lora_a, lora_b, scale):
    b_cat = torch.cat(lora_b.unbind(0), dim=1)
    a_cat = torch.cat(lora_a.unbind(0), dim=1)
    return F.linear(x, w) + scale * ((x @ b_cat) @ a_cat.T)


PROVIDERS = {
    "base": lambda x, w, a, b: F.linear(x, w),
    "fused": lambda x, w, a, b: fused_lora_linear(x, w, None, a, b, ALPHA),
    "unfused": lambda x, w, a, b: unfused(x, w, a, b, ALPHA),
}


@pytest.mark.parametrize("provider,docs", CASES, ids=[f"{p}-{d}docs" for p, d in CASES])
@pytest.mark.parametrize("m", MS, ids=[f"M{m}" for m in MS])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_kernel(benchmark, shape, m, provider, docs):
    x, w, lora_a, lora_b = operands(shape, m, docs)
    fn = PROVIDERS[provider]
    benchmark.group = f"kernel {shape} M={m}"
    benchmark.extra_info.update(suite="kernel", shape=shape, m=m, provider=provider, docs=docs, rank=RANK,
                                in_features=w.shape[1], out_features=w.shape[0])
    with torch.inference_mode():
        benchmark(fn, x, w, lora_a, lora_b)

"""The fused op's host cost at decode, measured on the CPU with the launches stubbed: what Python does per call.

    PYTHONPATH=kernels python bench/gpu/host_cost.py [--calls 20000] [--out bench/results/host_cost.json]

A decode call of the injection layer (fused_lora_linear_cat on Llama-3-8B's FFN shapes, M = 1, three rank-2
documents, bf16, the injection layer's layout, with and without per-row weights, under no_grad as in generate)
goes through everything it does on a GPU: the argument checks, the dispatch table lookup and the launch
arguments, on meta-device tensors (no memory, no arithmetic), with the launches stubbed:
prag_kernels.fused_lora_triton's _launch (Triton) and _vendor_gemm (F.linear, cuBLAS on a GPU; the stub still
allocates its output) replaced by no-ops. What is left out is the launchers' own host work (Triton binding its
arguments, torch's dispatch, the driver calls), which needs a GPU: bench/gpu/kernel_report.py times it there,
and graph replay (the serving engine on CUDA) skips all of it. Prints one line per call kind (the fastest of 5
runs of --calls calls, µs per call) and the target (≤ 10 µs, issue 34).
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from prag_kernels import column_mask, fused_lora_linear_cat
from prag_kernels import fused_lora_triton as ft

TARGET_US = 10.0
SHAPES = {"Llama-3-8B up 4096→14336": (4096, 14336), "Llama-3-8B down 14336→4096": (14336, 4096)}


def operands(k, n, per_row, docs=3, rank=2, dtype=torch.bfloat16):
    """The injection layer's decode operands on the meta device: x (1, 1, in), W, a_cat/b_cat with their
    transposes contiguous, per-row column weights (1, D·r) or None."""
    meta = dict(device="meta", dtype=dtype)
    a_cat = torch.empty(docs * rank, n, **meta).T
    b_cat = torch.empty(docs * rank, k, **meta).T
    mask = column_mask(torch.tensor([[0, 1, 2]]), docs, rank, dtype).to("meta") if per_row else None
    return torch.empty(1, 1, k, **meta), torch.empty(n, k, **meta), None, a_cat, b_cat, 16.0, mask


def per_call_us(fn, calls):
    """The fastest of 5 runs' mean µs per call (other work on the machine only ever adds time)."""
    fn()
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - start) / calls * 1e6)
    return min(runs)


def measure(calls):
    launched = []
    ft._launch = lambda kernel, grid, args, meta: launched.append(kernel)  # the stubs: no launcher, no GPU
    # the GEMM's stub still allocates its output, as F.linear does
    ft._vendor_gemm = lambda x, weight, bias, out: (
        launched.append(torch.mm) or torch.empty((x.shape[0], weight.shape[0]), dtype=x.dtype, device=x.device)
    )
    rows = []
    for name, (k, n) in SHAPES.items():
        for per_row in (False, True):
            args = operands(k, n, per_row)
            launched.clear()
            fused_lora_linear_cat(*args, backend="triton")
            paths = sorted({kernel.fn.__name__ if hasattr(kernel, "fn") else kernel.__name__ for kernel in launched})
            with torch.no_grad():  # as in generate
                us = per_call_us(lambda args=args: fused_lora_linear_cat(*args, backend="triton"), calls)
            rows.append({"shape": name, "rows": "per-row" if per_row else "all", "kernels": paths, "us": us})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = measure(args.calls)
    for r in rows:
        print(f"{r['shape']:28} {r['rows']:8} {', '.join(r['kernels']):16} {r['us']:6.1f} µs per call")
    worst = max(r["us"] for r in rows)
    print(f"worst {worst:.1f} µs per call: target ≤ {TARGET_US:.0f} µs {'met' if worst <= TARGET_US else 'NOT met'}")
    if args.out:
        record = dict(
            rows=rows,
            target_us=TARGET_US,
            calls=args.calls,
            date=time.strftime("%Y-%m-%d"),
            machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            loadavg=round(os.getloadavg()[0], 2),
            torch=torch.__version__,
            python=platform.python_version(),
        )
        args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()

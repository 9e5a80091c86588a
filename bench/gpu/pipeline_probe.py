"""Which operand loads of the Triton K-loops get pipelined, per layout of B, compiled for sm_90 on a CPU (no GPU).

    PYTHONPATH=kernels python bench/gpu/pipeline_probe.py        (~15 s; prints one markdown table)

For the fused path's prefill kernel (bf16, BLOCK 128/128/64, 8 warps, 3 stages, Llama-3-8B up at M 4096) and its
decode kernel (BLOCK_N 128, BLOCK_K 64, 4 warps, 4 stages, M 1) on each layout of B, and for the delta path's kernel
(delta_config's blocks, M 4096 and M 1) on the injection layer's layout, compiled as the JIT would specialise them
(prag_kernels.compile_gate.specialise), it counts in the TTGIR the loads that became asynchronous copies
(cp.async, pipelined over num_stages) and the plain tt.load left in the K-loop, and reads the
warp_group_dot_wait of the loop. Triton pipelines a load only if it is at least 32 bits wide (vector width
× element size, from the axis analysis): B read from lora_b (D, in, r) (stride r along `in`, rank
columns gathered with a runtime RANK) or from b_cat = torch.cat([B_d], dim=1) (stride D·r) is a 2-byte
gather, so it stays a synchronous load in every iteration, and the MMA wait drops to pendings = 0;
b_cat = cat_rank(b) (B_catᵀ contiguous, stride 1 along `in`), the injection layer's layout, is copied
asynchronously like x and W.
"""

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "kernels"))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from prag_kernels import fused_lora_triton as ft  # noqa: E402
from prag_kernels.compile_gate import specialise  # noqa: E402

K, N, DOCS, RANK = 4096, 14336, 3, 2
PREFILL = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3)
DECODE = dict(BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=4, SPLIT_K=1)


def operands(m, layout):
    meta = dict(device="meta", dtype=torch.bfloat16)
    x, w, out = torch.empty(m, K, **meta), torch.empty(N, K, **meta), torch.empty(m, N, **meta)
    if layout == "(D,in,r)":
        a, b = torch.empty(DOCS, N, RANK, **meta), torch.empty(DOCS, K, RANK, **meta)
    else:  # one "document" of rank D·r; A_catᵀ contiguous as prag_core.inject builds it
        a = torch.empty(DOCS * RANK, N, **meta).T.unsqueeze(0)
        b = (
            torch.empty(K, DOCS * RANK, **meta) if layout == "inject" else torch.empty(DOCS * RANK, K, **meta).T
        ).unsqueeze(0)
    return x, w, None, a, b, 1.0, None, out


def probe(m, layout, config, path="fused"):
    (kernel, _, args, meta), *_ = ft.launches(*operands(m, layout), config=dict(config), sms=132, path=path)
    meta = dict(meta)
    warps, stages = meta.pop("num_warps"), meta.pop("num_stages")
    signature, constexprs, attrs = specialise(kernel, args, meta)
    src = ASTSource(kernel, dict(signature), dict(constexprs), {k: [["tt.divisibility", v]] for k, v in attrs})
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=stages))
    loop = compiled.asm["ttgir"].split("scf.for", 1)[1].split("scf.yield", 1)[0]  # the (first) K-loop's body
    waits = re.findall(r"warp_group_dot_wait .*?pendings = (\d+)", loop)
    return dict(
        async_copies=loop.count("async_copy_global_to_local"),
        sync_loads=len(re.findall(r"= tt\.load", loop)),
        wait_pendings=",".join(waits) or "–",
        shared=compiled.metadata.shared,
    )


def main():
    print(f"Triton {triton.__version__}, sm_90, bf16, {K}→{N}, {DOCS} documents × rank {RANK}\n")
    print(
        "| kernel | layout of B | stride of B along in | async copies in K-loop | sync tt.load in K-loop "
        "| warp_group_dot_wait pendings | shared KB |"
    )
    print("|---|---|---|---|---|---|---|")
    strides = {"(D,in,r)": RANK, "inject": DOCS * RANK, "kT": 1}
    runs = [("fused prefill", 4096, PREFILL, "fused", layout) for layout in strides]
    runs += [("fused decode", 1, DECODE, "fused", layout) for layout in strides]
    runs += [(f"delta, M {m}", m, ft.delta_config(m, 2), "delta", "kT") for m in (4096, 1)]
    for name, m, config, path, layout in runs:
        r = probe(m, layout, config, path)
        print(
            f"| {name} | {layout} | {strides[layout]} | {r['async_copies']} | {r['sync_loads']} "
            f"| {r['wait_pendings']} | {r['shared'] / 1024:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

"""Compile every Triton launch prag_kernels can make for sm_80 and sm_90 on a CPU and check its machine code.

    python -m prag_kernels.compile_gate [--out FILE.md] [--jobs 2]     (prints the table, exit 1 on a failure)

For each call the kernels can get (dtype fp16/bf16/fp32 with and without tf32, with/without bias, with/without
per-row documents, total rank padded to R_PAD 16/32/64, decode M = 1 on an up and a down projection, so both
the one-launch and the split-K path, and a middle and a large prefill M), `launches` gives the kernels it runs
and the autotuner's pruner the configs it may pick. Each (kernel, config, specialisation) is compiled with
triton.compile(ASTSource(...), GPUTarget("cuda", cap, 32)) specialised as the JIT would for those arguments
(an int equal to 1 becomes the constexpr 1; pointers and ints divisible by 16 get tt.divisibility 16: the
shapes are a real model's, the operands contiguous, so the strides the pipeliner needs are 1 or multiples of
16). The wheel's cuobjdump --dump-resource-usage on the cubin gives registers and stack (> 0: spills or a
local array); metadata.shared is the shared memory, checked against the target's per-block limit.

The arguments are meta-device tensors, so nothing is allocated. Compiles run in a process pool and land in
Triton's cache (~/.triton/cache), so a rerun on unchanged kernels takes seconds.
"""

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import fused_lora_triton as ft

TARGETS = {80: 163 * 1024, 90: 227 * 1024}  # compute capability -> shared memory per block (opt-in maximum)
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.int64: "i64"}
DECODE_SHAPES = {"up 4096→14336": (4096, 14336), "down 14336→4096": (14336, 4096)}  # (in, out)
PREFILL = (("middle", 200, 4096, 14336), ("large", 2048, 4096, 14336))  # (family, M, in, out)
SMS = 132  # H100 / H200: decides split-K as on those cards
RANKS = {16: (3, 2), 32: (8, 4), 64: (16, 4)}  # R_PAD -> (documents, rank)


def calls():
    """(what, x, weight, bias, lora_a, lora_b, row_mask, out, tf32) for every kind of call, on the meta device."""
    shapes = [(f"decode {name}", 1, k, n) for name, (k, n) in DECODE_SHAPES.items()]
    shapes += [(f"prefill {family}", m, k, n) for family, m, k, n in PREFILL]
    for (what, m, k, n), (dtype, tf32), bias, rows, r_pad in itertools.product(
        shapes,
        [(torch.float16, False), (torch.bfloat16, False), (torch.float32, False), (torch.float32, True)],
        [False, True],
        [False, True],
        RANKS,
    ):
        docs, rank = RANKS[r_pad]
        meta = dict(device="meta", dtype=dtype)
        # the injection layer's layout: a_cat with a_cat.T contiguous, b_cat (in, R) contiguous, one "document"
        a_cat = torch.empty(docs * rank, n, **meta).T.unsqueeze(0)
        b_cat = torch.empty(k, docs * rank, **meta).unsqueeze(0)
        yield (
            what,
            torch.empty(m, k, **meta),
            torch.empty(n, k, **meta),
            torch.empty(n, **meta) if bias else None,
            a_cat,
            b_cat,
            torch.empty(m, docs * rank, **meta) if rows else None,
            torch.empty(m, n, **meta),
            tf32,
        )


def jobs():
    """{compile job: the calls that need it}: a job is (kernel name, signature, constexprs, attrs, warps, stages)."""
    found = {}
    for what, x, weight, bias, a, b, rows, out, tf32 in calls():
        torch.backends.cuda.matmul.allow_tf32 = tf32  # the launcher reads it for fp32 operands
        for kernel, _, args, meta in ft.launches(x, weight, bias, a, b, 1.0, rows, out, sms=SMS):
            if isinstance(kernel, triton.runtime.Autotuner):
                named = dict(zip(kernel.arg_names, args))
                configs = kernel.early_config_prune(kernel.configs, named, **meta)
                assert configs, f"{kernel.fn.__name__}: no config for {what} {meta}"
                kernel = kernel.fn
                variants = [(dict(meta, **c.kwargs), c.num_warps, c.num_stages) for c in configs]
            else:
                meta = dict(meta)
                variants = [(meta, meta.pop("num_warps"), meta.pop("num_stages"))]
            for constexprs, warps, stages in variants:
                job = (kernel.fn.__name__, *specialise(kernel, args, constexprs), warps, stages)
                found.setdefault(job, []).append(f"{what} {TYPES[x.dtype]}{'+tf32' if tf32 else ''}")
    torch.backends.cuda.matmul.allow_tf32 = False
    return found


def specialise(kernel, args, constexprs):
    """The JIT's specialisation of one launch: (signature, constexprs, {arg index: divisibility}), as tuples."""
    signature, consts, attrs = {}, {}, {}
    for i, param in enumerate(kernel.params):
        name = param.name
        if param.is_constexpr:
            signature[name], consts[name] = "constexpr", constexprs.get(name, param.default)
            continue
        value = args[i]
        if param.do_not_specialize:  # a runtime int (fused_lora_triton.RUNTIME): one variant for every value
            signature[name] = "i32"
        elif torch.is_tensor(value):
            signature[name] = "*" + TYPES[value.dtype]
            attrs[(i,)] = 16  # fresh allocations are 16-byte aligned
        elif isinstance(value, float):
            signature[name] = "fp32"
        elif value == 1:
            signature[name], consts[name] = "constexpr", 1
        else:
            signature[name] = "i32" if abs(value) < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(i,)] = 16
    return tuple(signature.items()), tuple(sorted(consts.items())), tuple(sorted(attrs.items()))


KERNELS = {k.fn.__name__: k for k in (ft._fused_lora_kernel, ft._decode_kernel, ft._reduce_kernel)}


def compile_job(job):
    """Compile one job for every target: [(cap, regs, shared bytes, stack bytes)]."""
    name, signature, consts, attrs, warps, stages = job
    results = []
    for cap in TARGETS:
        src = ASTSource(KERNELS[name], dict(signature), dict(consts), {k: [["tt.divisibility", v]] for k, v in attrs})
        kernel = triton.compile(
            src, target=GPUTarget("cuda", cap, 32), options=dict(num_warps=warps, num_stages=stages)
        )
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(kernel.asm["cubin"])
            f.flush()
            usage = subprocess.run(
                [str(CUOBJDUMP), "--dump-resource-usage", f.name], capture_output=True, text=True, check=True
            ).stdout
        fields = dict(field.split(":") for field in usage.split("Resource usage:")[-1].split() if ":" in field)
        results.append((cap, int(fields["REG"]), kernel.metadata.shared, int(fields["STACK"])))
    return results


def run(processes=2):
    """[(job, calls, results)] for every job, compiled in a pool of `processes`."""
    found = jobs()
    with ProcessPoolExecutor(processes) as pool:
        results = list(pool.map(compile_job, found, chunksize=4))
    return [(job, found[job], res) for job, res in zip(found, results)]


def passes(cap, regs, shared, stack):
    return stack == 0 and shared <= TARGETS[cap]


def describe(job):
    """('BLOCK_M 16, BLOCK_N 64, BLOCK_K 128 / 4 / 4' (blocks / warps / stages), 'bf16 R_PAD 16')."""
    name, signature, consts, _, warps, stages = job
    c = dict(consts)
    blocks = ", ".join(f"{b} {c[b]}" for b in ("BLOCK_M", "BLOCK_N", "BLOCK_K") if b in c)
    dtype = dict(signature)["y_ptr"][1:]
    prec = "+tf32" if dtype == "fp32" and c["PRECISION"] == "tf32" else ""
    return f"{blocks} / {warps} / {stages}", f"{dtype}{prec} R_PAD {c['R_PAD']}"


def table(rows):
    """Markdown: one line per (kernel, config) with the worst regs/shared/stack per target over its variants."""
    worst = {}
    for job, _, res in rows:
        config, _ = describe(job)
        entry = worst.setdefault((job[0], config), {"variants": 0, **{cap: [0, 0, 0] for cap in TARGETS}})
        entry["variants"] += 1
        for cap, regs, shared, stack in res:
            entry[cap] = [max(a, b) for a, b in zip(entry[cap], (regs, shared, stack))]
    lines = [
        f"# Kernel compile gate: {len(rows)} specialisations × {len(TARGETS)} targets, "
        f"{sum(1 for *_, res in rows for r in res if passes(*r))} of {len(rows) * len(TARGETS)} pass",
        "",
        f"Written by tests/test_kernel_compile.py (`python -m prag_kernels.compile_gate`), Triton "
        f"{triton.__version__}. Each row is one autotune config (or fixed launch) of one "
        "kernel; its numbers are the worst over every specialisation it can be picked for (dtype fp16, bf16, "
        "fp32 ieee and tf32 where the config takes 32-bit operands, bias or not, per-row documents or not, "
        "R_PAD up to the config's limit, M = 1 decode and middle/large prefill). Pass: stack 0 (no spills) "
        f"and shared ≤ {TARGETS[80] // 1024} KB on sm_80, ≤ {TARGETS[90] // 1024} KB on sm_90.",
        "",
        "| kernel | config (blocks / warps / stages) | variants | "
        + " | ".join(f"sm_{cap} regs | sm_{cap} shared KB | sm_{cap} stack B" for cap in TARGETS)
        + " | pass |",
        "|---|---|---|" + "---|---|---|" * len(TARGETS) + "---|",
    ]
    for (kernel, config), e in sorted(worst.items()):
        ok = all(passes(cap, *e[cap]) for cap in TARGETS)
        cells = " | ".join(f"{e[cap][0]} | {e[cap][1] / 1024:.0f} | {e[cap][2]}" for cap in TARGETS)
        lines.append(f"| {kernel} | {config} | {e['variants']} | {cells} | {'yes' if ok else '**no**'} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the markdown table here")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    rows = run(args.jobs)
    text = table(rows)
    if args.out:
        args.out.write_text(text)
    print(text)
    failed = [(describe(job), calls_[:3], res) for job, calls_, res in rows if not all(passes(*r) for r in res)]
    for fail in failed:
        print("FAIL", *fail, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Compile every Triton launch prag_kernels can make for sm_80 and sm_90 on a CPU and check its machine code.

    python -m prag_kernels.compile_gate [--out FILE.md] [--jobs 2]     (prints the table, exit 1 on a failure)

For each call the kernels can get (dtype fp16/bf16/fp32 with and without tf32, with/without bias, with/without
per-row documents, total rank padded to R_PAD 16/32/64, decode M = 1 on an up and a down projection, so both
the one-launch and the split-K path, and a middle and a large prefill M), `launches` gives the kernels it runs:
on the fused path with the configs the autotuner's pruner may pick, on the delta path once per DELTA_CONFIGS
entry that fits the call (operand size, R_PAD, BLOCK_M ≤ 16 at decode, > 16 at prefill). The operands have the
injection layer's CUDA layout: a_cat.T and b_cat.T contiguous (stride 1 along `out` and `in`). Each (kernel,
config, specialisation) is compiled with triton.compile(ASTSource(...), GPUTarget("cuda", cap, 32)) specialised
as the JIT would for those arguments (an int equal to 1 becomes the constexpr 1; pointers and ints divisible by
16 get tt.divisibility 16: the shapes are a real model's, the operands contiguous, so the strides the pipeliner
needs are 1 or multiples of 16). A job fails on a target when

    stack > 0              cuobjdump --dump-resource-usage on the cubin: spills (or a local array)
    shared > the limit     metadata.shared against the target's per-block maximum
    a narrow load          fp16/bf16: a global load of W, B or A narrower than 16 bytes (ld.global vector ×
                           element bits, cp.async's byte count; cp.async.bulk / TMA counts as wide), each load
                           named through the PTX's .loc back to its tl.load line in fused_lora_triton.py
    an unpipelined K-loop  a kernel whose K-loop feeds tl.dot, num_stages > 1, and no cp.async in the PTX
    no wgmma               sm_90, the fused prefill kernel in fp16/bf16 without wgmma.mma_async

(the H200 run's slow kernels had all three: B gathered 2 bytes at a time, no cp.async, and so no pipelining).
A load whose .loc is no tl.load line cannot be named: it fails nothing and is counted in the failure report.

The arguments are meta-device tensors, so nothing is allocated. Compiles run in a process pool and land in
Triton's cache (~/.triton/cache), so a rerun on unchanged kernels takes seconds.
"""

import argparse
import itertools
import os
import re
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

# Each operand is loaded on its own source line; these name the lines (any other tl.load line is "other").
OPERANDS = {"W": "tl.load(w_ptrs", "B": "tl.load(b_ptrs", "A": "tl.load(a_ptr + a_col", "x": "tl.load(x_ptrs"}
CHECKED = ("W", "B", "A")  # x is a few rows at decode: reported, not checked
WIDE = 16  # bytes per thread per load: one 128-bit transaction, what streaming a 16-bit tile at bandwidth takes
K_LOOPS = ("_fused_lora_kernel", "_decode_kernel", "_delta_kernel")  # kernels whose K-loop feeds tl.dot
SOURCE = Path(ft.__file__)
# Narrow loads the kernel code causes whatever the config: named in the failure message (none known now)
KERNEL_CAUSES = {}


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
        # the injection layer's CUDA layout, one "document" of rank docs·rank: a_cat.T and b_cat.T contiguous
        a_cat = torch.empty(docs * rank, n, **meta).T.unsqueeze(0)
        b_cat = torch.empty(docs * rank, k, **meta).T.unsqueeze(0)
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


def delta_configs(x, lora_b):
    """The DELTA_CONFIGS entries a call may run with: its operand size, R_PAD within reach, its M family."""
    r_pad = max(16, triton.next_power_of_2(lora_b.shape[0] * lora_b.shape[2]))
    decode = x.shape[0] <= ft.DECODE_M
    return [
        c
        for c in ft.DELTA_CONFIGS
        if c.operand_bytes == x.element_size()
        and c.r_pad_max >= r_pad
        and (c.kwargs["BLOCK_M"] <= ft.DECODE_M) == decode
    ]


def plans(x, weight, bias, a, b, rows, out):
    """Every launch list of one call: the fused path's, and the delta path's once per config that fits."""
    yield ft.launches(x, weight, bias, a, b, 1.0, rows, out, sms=SMS)
    for c in delta_configs(x, b):
        config = dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
        yield ft.launches(x, weight, bias, a, b, 1.0, rows, out, config, sms=SMS, path="delta")


def jobs():
    """{compile job: the calls that need it}: a job is (kernel name, signature, constexprs, attrs, warps, stages)."""
    found = {}
    for what, x, weight, bias, a, b, rows, out, tf32 in calls():
        torch.backends.cuda.matmul.allow_tf32 = tf32  # the launcher reads it for fp32 operands
        for kernel, _, args, meta in itertools.chain.from_iterable(plans(x, weight, bias, a, b, rows, out)):
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


KERNELS = {k.fn.__name__: k for k in (ft._fused_lora_kernel, ft._decode_kernel, ft._reduce_kernel, ft._delta_kernel)}


def source_lines(text):
    """{line number: "W" | "B" | "A" | "x" | "other"} for every tl.load line of a kernel source."""
    lines = {}
    for number, line in enumerate(text.splitlines(), 1):
        if "tl.load(" in line:
            lines[number] = next((name for name, call in OPERANDS.items() if call in line), "other")
    return lines


LOC = re.compile(r"^\s*\.loc\s+(\d+)\s+(\d+)")  # .loc file line col[, function_name .., inlined_at ..]
FILE = re.compile(r'^\s*\.file\s+(\d+)\s+"([^"]*)"(?:\s*,?\s*"([^"]*)")?')  # .file n "path" or "dir" "name"
LD = re.compile(r"\bld\.global(\.\S+)")  # ld.global[.nc][.L1::..].v4.b32
CP_ASYNC = re.compile(r"\bcp\.async\.c[ag]\.shared\.global\S*\s+\[[^\]]*\],\s*\[[^\]]*\],\s*(\w+)")
BULK = re.compile(r"\bcp\.async\.bulk\b")  # sm_90 TMA (cp.async.bulk.tensor ...): moves whole boxes


def ld_bytes(suffix):
    """Bytes one thread loads with ld.global<suffix>: the vector count (.v2/.v4/.v8) × the type's bits / 8."""
    parts = suffix.strip(".").split(".")
    count = next((int(p[1:]) for p in parts if re.fullmatch(r"v\d+", p)), 1)
    return count * int(re.search(r"(\d+)$", parts[-1]).group(1)) // 8


def ptx_loads(ptx, lines, source=SOURCE.name):
    """[(operand, bytes, asynchronous)] for every global load of the PTX: operand from `lines` (source_lines of
    `source`) by the load's .loc, whose first location is the innermost one (a line of an inlined @triton.jit
    helper such as _k_loop or _epilogue), None where the location is no tl.load line of `source`."""
    files = {}
    for line in ptx.splitlines():  # the .file table sits after the code
        if m := FILE.match(line):
            files[m.group(1)] = Path(m.group(3) or m.group(2)).name
    loads, here = [], None
    for line in ptx.splitlines():
        if m := LOC.match(line):
            here = lines.get(int(m.group(2))) if files.get(m.group(1)) == source else None
        elif m := LD.search(line):
            loads.append((here, ld_bytes(m.group(1)), False))
        elif m := CP_ASYNC.search(line):
            loads.append((here, int(m.group(1), 0), True))
        elif BULK.search(line):
            loads.append((here, WIDE, True))  # a bulk copy's size is a multiple of 16 bytes
    return loads


def has_async_copies(ptx):
    """cp.async (sm_80 and up) or its bulk / TMA form (sm_90): what Triton's pipeliner emits for a K-loop."""
    return re.search(r"\bcp\.async\.(?:ca|cg|bulk)\b", ptx) is not None


def has_wgmma(ptx):
    return "wgmma.mma_async" in ptx


def machine_code(ptx, lines):
    """What the checks read off one PTX: narrowest load per operand, operands with async copies, loads not named,
    async copies at all, wgmma."""
    loads = ptx_loads(ptx, lines)
    narrowest = {}
    for operand, size, _ in loads:
        if operand in OPERANDS:
            narrowest[operand] = min(size, narrowest.get(operand, size))
    return dict(
        narrowest=narrowest,
        async_operands=sorted({operand for operand, _, copy in loads if copy and operand in OPERANDS}),
        unnamed=sum(operand is None for operand, _, _ in loads),
        async_copies=has_async_copies(ptx),
        wgmma=has_wgmma(ptx),
    )


def compile_job(job):
    """Compile one job for every target: [{cap, regs, shared, stack, and machine_code's facts}]."""
    name, signature, consts, attrs, warps, stages = job
    lines = source_lines(SOURCE.read_text())
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
        results.append(
            dict(
                cap=cap,
                regs=int(fields["REG"]),
                shared=kernel.metadata.shared,
                stack=int(fields["STACK"]),
                **machine_code(kernel.asm["ptx"], lines),
            )
        )
    return results


def run(processes=2):
    """[(job, calls, results)] for every job, compiled in a pool of `processes`."""
    found = jobs()
    with ProcessPoolExecutor(processes) as pool:
        results = list(pool.map(compile_job, found, chunksize=4))
    return [(job, found[job], res) for job, res in zip(found, results)]


def dtype(job):
    """The job's operand type name (y's, which is x's): fp16, bf16 or fp32."""
    return dict(job[1])["y_ptr"][1:]


def problems(job, result):
    """Why one job fails on one target (result: one entry of compile_job's list): [] when it passes."""
    name, *_, stages = job
    cap, found = result["cap"], []
    if result["stack"]:
        found.append(f"{result['stack']} B of stack (spills)")
    if result["shared"] > TARGETS[cap]:
        found.append(f"{result['shared'] / 1024:.0f} KB shared > {TARGETS[cap] // 1024} KB")
    if dtype(job) in ("fp16", "bf16"):
        for operand in CHECKED:
            size = result["narrowest"].get(operand, WIDE)
            if size < WIDE:
                why = KERNEL_CAUSES.get((name, operand), "the config's tile or the operand's layout")
                found.append(f"{operand} loaded {size} bytes at a time (< {WIDE}; cause: {why})")
    if name in K_LOOPS and stages > 1 and not result["async_copies"]:
        found.append(f"num_stages {stages} but no cp.async: the K-loop is not pipelined")
    if cap == 90 and name == "_fused_lora_kernel" and dtype(job) != "fp32" and not result["wgmma"]:
        found.append("no wgmma.mma_async (wgmma needs 64 rows per warpgroup: BLOCK_M ≥ 16 · num_warps)")
    return [f"sm_{cap}: {p}" for p in found]


def describe(job):
    """('BLOCK_M 16, BLOCK_N 64, BLOCK_K 128 / 4 / 4' (blocks / warps / stages), 'bf16 R_PAD 16')."""
    name, signature, consts, _, warps, stages = job
    c = dict(consts)
    blocks = ", ".join(f"{b} {c[b]}" for b in ("BLOCK_M", "BLOCK_N", "BLOCK_K") if b in c)
    return f"{blocks} / {warps} / {stages}", f"{type_name(job)} R_PAD {c['R_PAD']}"


def type_name(job):
    """fp16, bf16, fp32 or fp32+tf32."""
    return dtype(job) + ("+tf32" if dtype(job) == "fp32" and dict(job[2])["PRECISION"] == "tf32" else "")


def worst(rows):
    """{(kernel, config): summary} over each row's variants: the largest regs/shared/stack, the narrowest load per
    operand, async copies and wgmma only if every variant has them, per target; its types, variants and pass."""
    rows_by = {}
    for job, _, res in rows:
        entry = rows_by.setdefault(
            (job[0], describe(job)[0]),
            {"variants": 0, "types": set(), "pass": True, **{cap: None for cap in TARGETS}},
        )
        entry["variants"] += 1
        entry["types"].add(type_name(job))
        for result in res:
            entry["pass"] &= not problems(job, result)
            e = entry[result["cap"]] = entry[result["cap"]] or dict(result, narrowest={})
            for key in ("regs", "shared", "stack"):
                e[key] = max(e[key], result[key])
            for key in ("async_copies", "wgmma"):
                e[key] = e[key] and result[key]
            for operand, size in result["narrowest"].items():
                e["narrowest"][operand] = min(size, e["narrowest"].get(operand, size))
    return rows_by


def table(rows):
    """Markdown: one line per (kernel, config) with its worst values per target over its variants."""
    summary = worst(rows)
    passed = sum(1 for job, _, res in rows for r in res if not problems(job, r))
    columns = []
    for cap in TARGETS:
        columns += [f"sm_{cap} regs", f"sm_{cap} shared KB", f"sm_{cap} stack B", f"sm_{cap} W/B/A load B"]
        columns += [f"sm_{cap} cp.async"] + ([f"sm_{cap} wgmma"] if cap >= 90 else [])
    lines = [
        f"# Kernel compile gate: {len(rows)} specialisations × {len(TARGETS)} targets, "
        f"{passed} of {len(rows) * len(TARGETS)} pass",
        "",
        f"Written by tests/test_kernel_compile.py (`python -m prag_kernels.compile_gate`), Triton "
        f"{triton.__version__}. Each row is one autotune config (or fixed launch) of one kernel; its numbers are "
        "the worst over every specialisation it can be picked for (types: fp16, bf16, fp32 ieee and tf32 as the "
        "config takes them; bias or not, per-row documents or not, R_PAD up to the config's limit, M = 1 decode "
        "and middle/large prefill; a_cat.T and b_cat.T contiguous). W/B/A load: the narrowest global load of W, "
        "B and A in bytes per thread (– : the kernel does not load it); cp.async: asynchronous copies in the PTX "
        "(a pipelined K-loop); wgmma: sm_90's warpgroup MMA. Pass: stack 0 (no spills), shared ≤ "
        f"{TARGETS[80] // 1024} KB on sm_80, ≤ {TARGETS[90] // 1024} KB on sm_90, and for fp16/bf16 every W, B, "
        f"A load ≥ {WIDE} bytes; cp.async where a K-loop with tl.dot has num_stages > 1; wgmma in the fused "
        "prefill kernel on sm_90 (fp16/bf16).",
        "",
        "| kernel | config (blocks / warps / stages) | types | variants | " + " | ".join(columns) + " | pass |",
        "|" + "---|" * (len(columns) + 5),
    ]
    for (kernel, config), e in sorted(summary.items()):
        cells = []
        for cap in TARGETS:
            t = e[cap]
            loads = "/".join(str(t["narrowest"].get(operand, "–")) for operand in CHECKED)
            cells += [str(t["regs"]), f"{t['shared'] / 1024:.0f}", str(t["stack"]), loads, yes(t["async_copies"])]
            cells += [yes(t["wgmma"])] if cap >= 90 else []
        types = ", ".join(sorted(e["types"]))
        lines.append(
            f"| {kernel} | {config} | {types} | {e['variants']} | {' | '.join(cells)} | {yes(e['pass'], '**no**')} |"
        )
    return "\n".join(lines) + "\n"


def yes(flag, no="no"):
    return "yes" if flag else no


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
    failed = 0
    for job, calls_, res in rows:
        found = [p for r in res for p in problems(job, r)]
        unnamed = {r["cap"]: r["unnamed"] for r in res if r["unnamed"]}
        if found:
            failed += 1
            config, what = describe(job)
            print(f"FAIL {job[0]} {config} {what} ({', '.join(calls_[:3])}): {'; '.join(found)}", file=sys.stderr)
            if unnamed:
                print(f"     global loads not traced to a tl.load line: {unnamed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

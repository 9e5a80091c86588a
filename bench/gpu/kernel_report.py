"""One GPU run that says why the fused LoRA linear is slow: correctness, timings with and without host overhead,
configs.

    PYTHONPATH=kernels python bench/gpu/kernel_report.py --out OUT/kernel.json     H100/H200: ~4-6 min
    python bench/gpu/kernel_report.py --cpu [--out f.json]                          dry run, Triton interpreter, < 60 s

Writes a markdown report to stdout and to --md (default: --out with .md), raw numbers to --out (JSON, rewritten
after every step, so a run cut short still leaves what it measured). --budget S (default 300): no new step
starts after S seconds; what is left is reported as "skipped (time budget)". Every measurement is wrapped:
a config that does not compile (e.g. out of shared memory) is a row with its error, not a crash.

Run order (the budget cuts from the end): correctness bf16, timings Llama-3-8B, host breakdown, prefill configs,
decode configs Llama-3-8B, correctness fp16, plain GEMM, timings of the other shapes, decode configs 1B down.

Sections (bf16, rank 2, α 16, 3 documents unless said):
  (i)   correctness of every launch path against the float64 reference_fused_lora_linear, fp16 and bf16
        (--cpu: fp32 and fp16, the interpreter's bf16 dot being broken): decode one launch, decode split-K (auto
        and forced with a ragged last chunk), prefill (middle and large M bucket, M 4096), per-row row_docs,
        row_docs per batch element (x (B, T, in)), empty rows (all slots -1), strided x; paths: the raw Triton
        launcher into a NaN-poisoned out=, the public fused_lora_linear, fused_lora_linear_cat on the injection
        layer's layout, and the raw launcher on the k-contiguous B layout (the candidate fix).
  (ii)  per FFN shape (SmolLM2-135M 576↔1536, Llama-3.2-1B 2048↔8192, Llama-3-8B 4096↔14336) and M in
        {1, 4, 16, 64, 512, 4096} (+ M 32 with 3 of 8 documents per row): F.linear, the public op (CUDA events
        around back-to-back calls: host overhead counts where it exceeds GPU time), its host-only cost
        (perf_counter over un-synchronised calls), and the raw launches timed INSIDE a captured CUDA graph (20
        calls per graph, replayed: GPU time only) for three layouts of B:
            (D,in,r)   lora_b as the public op takes it (stride along in = r: 2-byte gathers)
            inject     b_cat = torch.cat([B_d], dim=1), row-major (stride along in = D·r): what prag_core's
                       injection built before it switched to kT
            kT         b_cat = cat_rank(b), B_catᵀ contiguous (stride along in = 1: vectorised, pipelined)
        plus "restack" ((D,in,r) restacked to kT on every call, i.e. the fix inside the public op), unfused
        torch, merge+linear+restore; bytes moved, GB/s and share of peak DRAM bandwidth, TFLOPS.
  (ii-b) a decode call's host µs piece by piece (Llama-3-8B, M 1): checks, launches(), Autotuner + JIT launch,
        the same launch with a fixed config, an empty Triton kernel, F.linear.
  (iii) experiments: prefill configs at M 4096 and decode configs × SPLIT_K at M 1 and 16, passed as config= to
        fused_lora_linear_triton (graph time, rel err, registers/spills/shared memory), and a plain Triton GEMM
        (same tiles, masks and loop, no LoRA) as the ceiling a config can reach.
"""

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PARSER = argparse.ArgumentParser(description=__doc__.splitlines()[0])
PARSER.add_argument("--cpu", action="store_true", help="dry run: tiny shapes, Triton interpreter, no timings")
PARSER.add_argument("--out", type=Path, help="raw JSON here (default: none)")
PARSER.add_argument("--md", type=Path, help="markdown here too (default: --out with suffix .md)")
PARSER.add_argument(
    "--budget",
    type=float,
    default=None,
    help="seconds after which no new step starts (default 300 on a GPU, 50 with --cpu)",
)
PARSER.add_argument(
    "--autotune-rep",
    type=float,
    default=40.0,
    help="ms of timed runs per config when the autotuner benchmarks (Triton's default is 100; "
    "0 keeps Triton's own benchmarker)",
)
OPTIONS = PARSER.parse_args()
CPU = OPTIONS.cpu
if CPU:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported
sys.path.insert(0, str(ROOT / "kernels"))  # prag_kernels from this checkout, no pip install needed

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from prag_kernels import (  # noqa: E402
    column_mask,
    fused_lora_linear,
    fused_lora_linear_cat,
    fused_lora_linear_triton,
    merge_lora_,
    reference_fused_lora_linear,
    restore_,
)
from prag_kernels import fused_lora_triton as ft  # noqa: E402
from prag_kernels.torch_path import cat_rank  # noqa: E402

START = time.perf_counter()
BUDGET = OPTIONS.budget if OPTIONS.budget is not None else (50.0 if CPU else 300.0)
ALPHA, RANK, DOCS, LOADED = 16.0, 2, 3, 8
DEVICE = "cpu" if CPU else "cuda"
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
BF16 = torch.bfloat16

if CPU:
    TIME_DTYPE = torch.float16  # the interpreter's bf16 dot is broken
    CHECK_DTYPES = (torch.float32, torch.float16)
    # S: decode without split (few K), SD: prefill shape, L: long K so that the split-K decode runs (sms = 8)
    S, SD, L1, L1D, L8, L8D = (64, 96), (96, 64), (64, 96), (2304, 64), (64, 96), (2304, 64)
    SHAPES = {"tiny up 64→96": (64, 96), "tiny long-K 2304→64": (2304, 64)}
    MS = (1, 37)
    HETERO_M = 8
else:
    TIME_DTYPE = BF16
    CHECK_DTYPES = (BF16, torch.float16)
    S, SD, L1, L1D, L8, L8D = (576, 1536), (1536, 576), (2048, 8192), (8192, 2048), (4096, 14336), (14336, 4096)
    SHAPES = {
        "Llama-3-8B up 4096→14336": L8,
        "Llama-3-8B down 14336→4096": L8D,
        "Llama-3.2-1B up 2048→8192": L1,
        "Llama-3.2-1B down 8192→2048": L1D,
        "SmolLM2-135M up 576→1536": S,
        "SmolLM2-135M down 1536→576": SD,
    }
    MS = (1, 4, 16, 64, 512, 4096)
    HETERO_M = 32
LLAMA8 = [name for name in SHAPES if name.startswith("Llama-3-8B")] or list(SHAPES)[:1]

# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages); the first three are the shipped large-bucket pool
PREFILL_EXPERIMENTS = [
    (128, 128, 64, 8, 3),
    (128, 64, 64, 4, 4),
    (64, 128, 64, 4, 4),
    (128, 256, 64, 8, 3),
    (128, 256, 64, 8, 4),
    (256, 128, 64, 8, 3),
    (128, 128, 64, 4, 4),
    (128, 128, 64, 8, 4),
    (128, 128, 128, 8, 3),
    (64, 256, 32, 4, 4),
    (64, 256, 64, 4, 3),
    (128, 256, 32, 8, 4),
]
PREFILL_ALL_LAYOUTS = 4  # the first 4 also on the (D,in,r) and inject layouts, the rest on kT only
# (BLOCK_N, BLOCK_K, warps, stages); the first four are the shipped 16-bit pool
DECODE_EXPERIMENTS = [
    (64, 128, 4, 4),
    (128, 64, 4, 4),
    (128, 128, 4, 3),
    (64, 64, 4, 3),
    (64, 256, 4, 3),
    (128, 128, 4, 4),
    (64, 128, 4, 6),
    (128, 256, 4, 3),
    (256, 64, 8, 3),
    (32, 128, 4, 4),
]
DECODE_ALL_LAYOUTS = 4
PLAIN_GEMM = [
    (128, 128, 64, 8, 3),
    (128, 256, 64, 8, 3),
    (128, 128, 64, 4, 4),
    (64, 256, 32, 4, 4),
    (128, 256, 64, 8, 4),
]
if CPU:  # the dry run exercises the plumbing, not every config
    PREFILL_EXPERIMENTS, DECODE_EXPERIMENTS, PLAIN_GEMM = (
        PREFILL_EXPERIMENTS[:4],
        DECODE_EXPERIMENTS[:3],
        PLAIN_GEMM[:2],
    )

REPORT = {
    "meta": {},
    "correctness": [],
    "timing": [],
    "host_breakdown": [],
    "prefill_configs": [],
    "decode_configs": [],
    "plain_gemm": [],
    "steps": [],
    "errors": [],
}
NO_CUDA = "skipped (no CUDA)"
OVER_BUDGET = "skipped (time budget)"


# ---------------------------------------------------------------- small helpers


def elapsed():
    return time.perf_counter() - START


def log(msg):
    print(f"[{elapsed():6.1f}s] {msg}", file=sys.stderr, flush=True)


def clean(v):
    """JSON-safe: non-finite floats as strings, tuples as lists, dtypes as names."""
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, dict):
        return {str(k): clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [clean(x) for x in v]
    if isinstance(v, torch.dtype):
        return str(v).replace("torch.", "")
    return v


def dump():
    REPORT["meta"]["elapsed_s"] = round(elapsed(), 1)
    if OPTIONS.out:
        tmp = OPTIONS.out.with_suffix(OPTIONS.out.suffix + ".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(clean(REPORT), indent=1))
        tmp.replace(OPTIONS.out)


def error_text(e):
    text = f"{type(e).__name__}: {e}".replace("\n", " ")
    return text[:300]


def sync():
    if not CPU:
        torch.cuda.synchronize()


def rel_err(y, ref):
    """‖y − ref‖ / ‖ref‖ in float64; inf when y holds a NaN (an element left unwritten)."""
    y = y.detach().double().reshape(ref.shape)
    if not torch.isfinite(y).all():
        return float("inf")
    den = ref.norm().item()
    return (y - ref).norm().item() / (den if den > 0 else 1.0)


# ---------------------------------------------------------------- timing (CUDA only)


def events_us(fn, target_s=0.004, samples=7):
    """Median µs per call: CUDA events around batches of back-to-back calls (host overhead counts where it
    exceeds the GPU time, as in a decode loop)."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    calls = max(1, min(200, int(target_s / max(time.perf_counter() - t0, 1e-6))))
    out = []
    for _ in range(samples):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        out.append(begin.elapsed_time(end) * 1e3 / calls)
    return statistics.median(out)


def host_us(fn, calls=50, samples=3):
    """Median µs of CPU time per call: perf_counter around un-synchronised calls (the launch queue absorbs them)."""
    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        out.append((time.perf_counter() - t0) * 1e6 / calls)
        torch.cuda.synchronize()
    return statistics.median(out)


def graph_us(fn, calls=20, target_s=0.004, samples=5):
    """Median µs per call of GPU time only: `calls` calls captured in one CUDA graph, the graph replayed."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up off the capture: compiles, autotuning, allocator
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return events_us(graph.replay, target_s, samples) / calls


def measure(kind, fn, calls=20):
    """One timing as (µs or None, note): CPU mode runs fn once (so the path is exercised) and reports no time."""
    try:
        if CPU:
            fn()
            return None, NO_CUDA
        if kind == "events":
            return events_us(fn), None
        if kind == "host":
            return host_us(fn), None
        return graph_us(fn, calls), None
    except Exception as e:  # noqa: BLE001 - a failed measurement is a row, not a crash
        try:
            sync()
        except Exception:  # noqa: BLE001
            pass
        REPORT["errors"].append({"what": kind, "error": error_text(e), "trace": traceback.format_exc()[-2000:]})
        return None, error_text(e)


# ---------------------------------------------------------------- operands


def operands(k, n, m, dtype, docs=DOCS, bias=False, seed=0, strided=False):
    """x (m, k), W, bias or None, A (docs, n, r), B (docs, k, r): values ~ a trained adapter's, the LoRA term
    about as large as the base."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k + (64 if strided else 0), generator=g)[:, :k]
    w = torch.randn(n, k, generator=g) / k**0.5
    b_ = torch.randn(n, generator=g) * 0.1 if bias else None
    a = torch.randn(docs, n, RANK, generator=g) * 0.02
    b = torch.randn(docs, k, RANK, generator=g) / k**0.5
    move = lambda t: None if t is None else t.to(DEVICE, dtype)  # noqa: E731
    x = x.to(DEVICE, dtype) if not strided else torch.empty(m, k + 64, device=DEVICE, dtype=dtype)[:, :k].copy_(x)
    return x, move(w), move(b_), move(a), move(b)


def layouts(a, b):
    """{layout: (lora_a, lora_b) as the raw launcher takes them}: the (D, in, r) pair, the injection layer's
    stacking (b_cat = torch.cat(dim=1): rows of `in` contiguous) and the k-contiguous stacking (cat_rank)."""
    a_cat = cat_rank(a)  # (out, R), a_cat.T contiguous: what inject._stack builds for A
    b_inject = torch.cat(list(b.unbind(0)), dim=1)  # (in, R) row-major: inject._stack's old B layout
    return {
        "(D,in,r)": (a, b),
        "inject": (a_cat.unsqueeze(0), b_inject.unsqueeze(0)),
        "kT": (a_cat.unsqueeze(0), cat_rank(b).unsqueeze(0)),
    }


def row_sets(groups, docs, mode, seed=1):
    """(groups, 3) document ids; mode docs: some -1 slots; empty: every other row all -1."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.stack([torch.randperm(docs, generator=g)[:3] for _ in range(groups)])
    rows[::5, 2] = -1
    if mode == "empty":
        rows[::2, :] = -1
    return rows.to(DEVICE)


def shape_name(k, n):
    for name, shape in SHAPES.items():
        if shape == (k, n):
            return name
    return f"{k}→{n}"


# ---------------------------------------------------------------- (i) correctness


def correctness_cases():
    decode_forced = dict(BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=3, SPLIT_K=5)
    return [
        dict(what="decode, one launch", shape=S, m=1),
        dict(what="decode, one launch, bias", shape=L8, m=1, bias=True),
        dict(what="decode, split-K (auto)", shape=L8D, m=16),
        dict(what="decode, split-K (auto), bias", shape=L1D, m=4, bias=True),
        dict(what="decode, split-K forced 5 chunks (last one ragged)", shape=S, m=3, config=decode_forced),
        dict(what="prefill, middle bucket, bias", shape=SD, m=37, bias=True),
        dict(what="prefill, large bucket", shape=L1, m=512 if not CPU else 300),
        dict(what="prefill, largest M", shape=L8D, m=4096 if not CPU else 64),
        dict(what="per-row row_docs, decode (split-K)", shape=L8D, m=8, rows="docs", docs=LOADED),
        dict(what="per-row row_docs, prefill, bias", shape=S, m=64, rows="docs", docs=LOADED, bias=True),
        dict(what="row_docs per batch element, x (2, 4, in), decode", shape=L1, lead=(2, 4), rows="docs", docs=LOADED),
        dict(
            what="row_docs per batch element, x (4, 16, in), prefill", shape=S, lead=(4, 16), rows="docs", docs=LOADED
        ),
        dict(what="empty rows (all slots -1), decode", shape=L8, m=16, rows="empty", docs=LOADED),
        dict(what="empty rows (all slots -1), prefill", shape=SD, m=48, rows="empty", docs=LOADED),
        dict(what="strided x (row stride in + 64), decode", shape=L1, m=5, strided=True),
        dict(what="strided x (row stride in + 64), prefill", shape=S, m=40, strided=True),
    ]


def check_case(case, dtype):
    k, n = case["shape"]
    lead = case.get("lead")
    m = lead[0] * lead[1] if lead else case["m"]
    docs, mode = case.get("docs", DOCS), case.get("rows")
    x, w, bias, a, b = operands(
        k,
        n,
        m,
        dtype,
        docs=docs,
        bias=case.get("bias", False),
        strided=case.get("strided", False),
        seed=zlib.crc32(case["what"].encode()) % 1000,
    )
    groups = lead[0] if lead else m
    row_docs = row_sets(groups, docs, mode) if mode else None
    per_row = None if row_docs is None else row_docs.repeat_interleave(m // groups, dim=0)
    ref = reference_fused_lora_linear(
        x.double(), w.double(), None if bias is None else bias.double(), a.double(), b.double(), ALPHA, per_row
    )
    base = x.double() @ w.double().T + (0 if bias is None else bias.double())
    empty = None if per_row is None else (per_row < 0).all(1)
    x_in = x.view(*lead, k) if lead else x
    mask = None if row_docs is None else column_mask(row_docs, docs, RANK, dtype)
    lay = layouts(a, b)
    cfg = case.get("config")

    def raw(layout):
        la, lb = lay[layout]
        out = torch.full((m, n), float("nan"), device=DEVICE, dtype=dtype)
        kw = dict(row_docs=row_docs) if layout == "(D,in,r)" else dict(row_mask=mask)
        return fused_lora_linear_triton(x, w, bias, la, lb, ALPHA, out=out, config=cfg, **kw)

    paths = {"raw (D,in,r), out=NaN": lambda: raw("(D,in,r)"), "raw kT, out=NaN": lambda: raw("kT")}
    if cfg is None:
        paths["public fused_lora_linear"] = lambda: fused_lora_linear(x_in, w, bias, a, b, ALPHA, row_docs)
        paths["fused_lora_linear_cat (inject layout)"] = lambda: fused_lora_linear_cat(
            x_in, w, bias, lay["inject"][0][0], lay["inject"][1][0], ALPHA, mask
        )
    rows = []
    for path, fn in paths.items():
        entry = dict(case=case["what"], path=path, dtype=dtype, shape=f"{k}→{n}", m=m, tol=TOL[dtype])
        try:
            y = fn()
            sync()
            y2 = y.reshape(m, n)
            err = rel_err(y2, ref)
            delta_ref = ref - base
            d_norm = delta_ref.norm().item()
            d_err = rel_err(y2.double() - base, delta_ref) if d_norm > 0 else None
            empty_err = None
            if empty is not None and empty.any():
                empty_err = rel_err(y2[empty], base[empty])
            ok = (
                err < TOL[dtype]
                and (d_err is None or d_err < 5 * TOL[dtype])
                and (empty_err is None or empty_err < TOL[dtype])
            )
            entry.update(rel_err=err, lora_rel_err=d_err, empty_rows_rel_err=empty_err, ok=bool(ok))
        except Exception as e:  # noqa: BLE001
            entry.update(ok=False, error=error_text(e))
            REPORT["errors"].append(
                {
                    "what": f"check {case['what']} {path}",
                    "error": error_text(e),
                    "trace": traceback.format_exc()[-2000:],
                }
            )
        rows.append(entry)
    return rows


def run_correctness(dtype):
    for case in correctness_cases():
        if over_budget():
            REPORT["correctness"].append(dict(case=case["what"], dtype=dtype, path="all", ok=None, note=OVER_BUDGET))
            continue
        for entry in check_case(case, dtype):
            REPORT["correctness"].append(entry)
            if not entry["ok"]:
                log(f"CHECK FAILED {entry}")


# ---------------------------------------------------------------- (ii) timing table


def moved_bytes(k, n, m, docs, elem=2):
    """What one call must move at least: W, x, the loaded pairs A and B, y, each once."""
    return (n * k + m * k + docs * RANK * (n + k) + m * n) * elem


def peak_gbps():
    if CPU:
        return None
    try:
        import triton.testing

        return float(triton.testing.get_dram_gbps())
    except Exception as e:  # noqa: BLE001
        REPORT["errors"].append({"what": "get_dram_gbps", "error": error_text(e)})
        return None


def best_config(autotuner):
    """The config the autotuner ran last, as a config= dict."""
    cfg = getattr(autotuner, "best_config", None)
    return None if cfg is None else dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def timing_row(name, k, n, m, hetero=False):
    """All timings of one (shape, M)."""
    docs = LOADED if hetero else DOCS
    x, w, _, a, b = operands(k, n, m, TIME_DTYPE, docs=docs)
    row_docs = row_sets(m, docs, "docs") if hetero else None
    mask = None if row_docs is None else column_mask(row_docs, docs, RANK, TIME_DTYPE)
    lay = layouts(a, b)
    out = torch.empty(m, n, device=DEVICE, dtype=TIME_DTYPE)
    a_cat, b_kt = lay["kT"][0][0], lay["kT"][1][0]

    def raw(layout):
        la, lb = lay[layout]
        kw = dict(row_docs=row_docs) if layout == "(D,in,r)" else dict(row_mask=mask)
        return lambda: fused_lora_linear_triton(x, w, None, la, lb, ALPHA, out=out, **kw)

    def restack():
        return fused_lora_linear_triton(
            x, w, None, cat_rank(a).unsqueeze(0), cat_rank(b).unsqueeze(0), ALPHA, out=out, row_mask=mask
        )

    def unfused():
        shrink = x @ b_kt
        return F.linear(x, w) + ALPHA * ((shrink if mask is None else shrink * mask) @ a_cat.T)

    def merged():
        backup = merge_lora_(w, a, b, ALPHA)
        y = F.linear(x, w)
        restore_(w, backup)
        return y

    api = lambda: fused_lora_linear(x, w, None, a, b, ALPHA, row_docs)  # noqa: E731
    cat_api = lambda: fused_lora_linear_cat(x, w, None, lay["inject"][0][0], lay["inject"][1][0], ALPHA, mask)  # noqa: E731
    linear = lambda: F.linear(x, w)  # noqa: E731
    calls = 20 if m < 1024 else 5
    row = dict(shape=name, k=k, n=n, m=m, docs=f"3 of {docs} per row" if hetero else str(docs), notes={})
    plan = [
        ("linear_events", "events", linear),
        ("linear_graph", "graph", linear),
        ("api_events", "events", api),
        ("api_host", "host", api),
        ("raw_dinr_graph", "graph", raw("(D,in,r)")),
        ("cat_api_events", "events", cat_api),
        ("cat_api_host", "host", cat_api),
        ("raw_inject_graph", "graph", raw("inject")),
        ("raw_kT_graph", "graph", raw("kT")),
        ("restack_graph", "graph", restack),
        ("unfused_events", "events", unfused),
        ("unfused_graph", "graph", unfused),
    ]
    if not hetero:
        plan.append(("merge_events", "events", merged))
    with torch.inference_mode():
        for key, kind, fn in plan:
            if kind == "graph" and key.startswith("api"):
                continue
            value, note = measure(kind, fn, calls)
            row[key] = value
            if note:
                row["notes"][key] = note
            if key == "raw_dinr_graph":
                auto = ft._decode_autotuned if m <= ft.DECODE_M else ft._fused_lora_autotuned
                row["config_dinr"] = best_config(auto)
            if key == "raw_kT_graph":
                auto = ft._decode_autotuned if m <= ft.DECODE_M else ft._fused_lora_autotuned
                row["config_kT"] = best_config(auto)
    if m <= ft.DECODE_M:
        row["split_k"] = ft.split_k(n, k, ft._sm_count(x.device))[0]
    row["moved_bytes"] = moved_bytes(k, n, m, docs)
    row["flops"] = 2 * m * n * k + 2 * m * docs * RANK * (n + k)
    row["w_bytes"] = n * k * 2
    REPORT["timing"].append(row)
    return row


def run_timing(names, ms, hetero=True):
    for name in names:
        k, n = SHAPES[name]
        for m in ms:
            if over_budget():
                REPORT["timing"].append(dict(shape=name, k=k, n=n, m=m, docs=str(DOCS), notes={"all": OVER_BUDGET}))
                continue
            log(f"timing {name} M={m}")
            timing_row(name, k, n, m)
        if hetero and (name in LLAMA8 or CPU):
            if over_budget():
                continue
            log(f"timing {name} M={HETERO_M} per-row documents")
            timing_row(name, k, n, HETERO_M, hetero=True)
        if not CPU:
            torch.cuda.empty_cache()
        dump()


@triton.jit
def _noop(x_ptr):
    """An empty kernel with one argument: the floor of a Triton launch's host cost."""
    pid = tl.program_id(0)  # noqa: F841


HOST_ITEMS = [
    ("F.linear", "torch's cuBLAS launch, for scale"),
    ("empty Triton kernel, 1 arg", "Triton's launcher floor"),
    ("check_operands", "the public op's argument checks"),
    ("launches() only", "our Python: strides, split_k, arg tuple (~36 args), closures; no launch"),
    ("launch plan, autotuned", "Autotuner.run + JITFunction.run for the prebuilt plan (all launches)"),
    ("launch plan, fixed config", "JITFunction.run alone for the same config (no autotuner)"),
    ("raw launcher, out=", "fused_lora_linear_triton(..., out=): launches() + plan + column_mask if any"),
    ("public op", "fused_lora_linear: checks + raw launcher + torch.empty(out)"),
    ("cat entry (inject layout)", "fused_lora_linear_cat"),
]


def run_host_breakdown(names, m=1):
    """Where a decode call's host µs go (hypothesis a): each piece timed as CPU µs per un-synchronised call."""
    from prag_kernels.checks import check_operands

    for name in names:
        k, n = SHAPES[name]
        x, w, _, a, b = operands(k, n, m, TIME_DTYPE)
        lay = layouts(a, b)
        out = torch.empty(m, n, device=DEVICE, dtype=TIME_DTYPE)
        plan = ft.launches(x, w, None, a, b, ALPHA, None, out)
        fused_lora_linear_triton(x, w, None, a, b, ALPHA, out=out)  # autotunes
        fixed = best_config(ft._decode_autotuned if m <= ft.DECODE_M else ft._fused_lora_autotuned) or {}
        fixed_plan = ft.launches(x, w, None, a, b, ALPHA, None, out, dict(fixed))

        def run_plan(p):
            return lambda: [kernel[grid](*args, **meta) for kernel, grid, args, meta in p]

        fns = {
            "F.linear": lambda: F.linear(x, w),
            "empty Triton kernel, 1 arg": lambda: _noop[(1,)](x),
            "check_operands": lambda: check_operands(x, w, None, a, b),
            "launches() only": lambda: ft.launches(x, w, None, a, b, ALPHA, None, out),
            "launch plan, autotuned": run_plan(plan),
            "launch plan, fixed config": run_plan(fixed_plan),
            "raw launcher, out=": lambda: fused_lora_linear_triton(x, w, None, a, b, ALPHA, out=out),
            "public op": lambda: fused_lora_linear(x, w, None, a, b, ALPHA),
            "cat entry (inject layout)": lambda: fused_lora_linear_cat(
                x, w, None, lay["inject"][0][0], lay["inject"][1][0], ALPHA
            ),
        }
        row = dict(shape=name, k=k, n=n, m=m, launches=len(plan), fixed_config=fixed, host_us={}, notes={})
        with torch.inference_mode():
            for item, _ in HOST_ITEMS:
                if over_budget():
                    row["notes"][item] = OVER_BUDGET
                    continue
                value, note = measure("host", fns[item])
                row["host_us"][item] = value
                if note:
                    row["notes"][item] = note
            row["gpu_graph_us"], note = (None, NO_CUDA) if CPU else measure("graph", fns["raw launcher, out="])
        REPORT["host_breakdown"].append(row)
        log(f"host breakdown {name}: {row['host_us']}")
        dump()


# ---------------------------------------------------------------- (iii) experiments


def fp32_reference(x, w, a, b):
    xf, af, bf = x.float(), cat_rank(a).float(), cat_rank(b).float()
    return (xf @ w.float().T + ALPHA * (xf @ bf) @ af.T).double()


def compiled_info(x, w, la, lb, out, cfg):
    """[(kernel, regs, spills, shared bytes)] of the launches for this config (a launch returns its kernel)."""
    info = []
    for kernel, grid, args, meta in ft.launches(x, w, None, la, lb, ALPHA, None, out, dict(cfg)):
        compiled = kernel[grid](*args, **meta)
        md = getattr(compiled, "metadata", None)
        info.append(
            dict(
                kernel=getattr(getattr(kernel, "fn", kernel), "__name__", str(kernel)),
                regs=getattr(compiled, "n_regs", None),
                spills=getattr(compiled, "n_spills", None),
                shared=getattr(md, "shared", None),
            )
        )
    return info


def config_row(section, name, k, n, m, layout, cfg, x, w, lay, ref, extra=None):
    """One config's row of `section`: kernels, relative error, graph µs (marked over budget when out of time)."""
    if over_budget():
        REPORT[section].append(dict(shape=name, m=m, layout=layout, config=cfg, status=OVER_BUDGET))
        return
    la, lb = lay[layout]
    out = torch.empty(m, n, device=DEVICE, dtype=x.dtype)
    row = dict(shape=name, k=k, n=n, m=m, layout=layout, config=dict(cfg), **(extra or {}))
    try:
        row["kernels"] = compiled_info(x, w, la, lb, out, cfg)  # compiles (and runs) first: errors surface here
        sync()
        row["rel_err"] = rel_err(out, ref)
        fn = lambda: fused_lora_linear_triton(x, w, None, la, lb, ALPHA, out=out, config=dict(cfg))  # noqa: E731
        row["graph_us"], note = (None, NO_CUDA) if CPU else measure("graph", fn, 20 if m < 1024 else 5)
        row["status"] = ("ok" if row["rel_err"] < 5 * TOL[x.dtype] else "WRONG RESULT") + (f"; {note}" if note else "")
    except Exception as e:  # noqa: BLE001
        try:
            sync()
        except Exception:  # noqa: BLE001
            pass
        row["status"] = error_text(e)
    REPORT[section].append(row)
    return row


def linear_graph_us(x, w):
    value, _ = measure("graph", lambda: F.linear(x, w), 20 if x.shape[0] < 1024 else 5)
    return value


def run_prefill_experiments(names):
    m = 4096 if not CPU else 37
    for name in names:
        k, n = SHAPES[name]
        if over_budget():
            REPORT["prefill_configs"].append(dict(shape=name, m=m, status=OVER_BUDGET))
            continue
        x, w, _, a, b = operands(k, n, m, TIME_DTYPE)
        lay, ref = layouts(a, b), fp32_reference(x, w, a, b)
        base = linear_graph_us(x, w)
        with torch.inference_mode():
            for i, (bm, bn, bk, warps, stages) in enumerate(PREFILL_EXPERIMENTS):
                cfg = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)
                for layout in ("kT", "(D,in,r)", "inject") if i < PREFILL_ALL_LAYOUTS else ("kT",):
                    log(f"prefill config {name} {layout} {cfg}")
                    config_row(
                        "prefill_configs",
                        name,
                        k,
                        n,
                        m,
                        layout,
                        cfg,
                        x,
                        w,
                        lay,
                        ref,
                        dict(linear_graph_us=base, flops=2 * m * n * k),
                    )
        del x, w, a, b, ref
        if not CPU:
            torch.cuda.empty_cache()
        dump()


def run_decode_experiments(names, ms=(1, 16)):
    for name in names:
        k, n = SHAPES[name]
        for m in ms:
            if over_budget():
                REPORT["decode_configs"].append(dict(shape=name, m=m, status=OVER_BUDGET))
                continue
            x, w, _, a, b = operands(k, n, m, TIME_DTYPE)
            lay, ref = layouts(a, b), fp32_reference(x, w, a, b)
            base = linear_graph_us(x, w)
            auto_split = ft.split_k(n, k, ft._sm_count(x.device))[0]
            splits = sorted({1, 2, auto_split} | ({4, 8} if auto_split > 1 else set()))
            if CPU:
                splits = sorted({1, 2})
            with torch.inference_mode():
                for i, (bn, bk, warps, stages) in enumerate(DECODE_EXPERIMENTS):
                    for split in splits:
                        cfg = dict(BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages, SPLIT_K=split)
                        for layout in ("kT", "(D,in,r)", "inject") if i < DECODE_ALL_LAYOUTS else ("kT",):
                            config_row(
                                "decode_configs",
                                name,
                                k,
                                n,
                                m,
                                layout,
                                cfg,
                                x,
                                w,
                                lay,
                                ref,
                                dict(
                                    linear_graph_us=base, auto_split=auto_split, moved_bytes=moved_bytes(k, n, m, DOCS)
                                ),
                            )
            log(f"decode configs {name} M={m} done")
            del x, w, a, b, ref
            dump()


@triton.jit(do_not_specialize=("M",))
def _plain_gemm(
    x_ptr,
    w_ptr,
    y_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    stride_ym,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr = 8,
):
    """y = x Wᵀ with _fused_lora_kernel's tile order, pointer arithmetic, masks and K-loop, and no LoRA: the
    ceiling a prefill config reaches in Triton (contiguous x and W)."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    group_id = pid // (GROUP_M * num_pid_n)
    first_m = group_id * GROUP_M
    group_m = min(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * num_pid_n)) % group_m
    pid_n = (pid % (GROUP_M * num_pid_n)) // group_m
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok, n_ok = offs_m < M, offs_n < N
    x_ptrs = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm + offs_k[None, :]
    w_ptrs = w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = offs_k < K - k0
        x = tl.load(x_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(x, w, acc)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def run_plain_gemm(names):
    m = 4096 if not CPU else 37
    for name in names:
        k, n = SHAPES[name]
        x, w, _, _, _ = operands(k, n, m, TIME_DTYPE)
        ref = (x.float() @ w.float().T).double()
        y = torch.empty(m, n, device=DEVICE, dtype=TIME_DTYPE)
        for bm, bn, bk, warps, stages in PLAIN_GEMM:
            cfg = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)
            row = dict(shape=name, k=k, n=n, m=m, config=cfg, flops=2 * m * n * k)
            if over_budget():
                row["status"] = OVER_BUDGET
                REPORT["plain_gemm"].append(row)
                continue
            grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)

            def fn():
                return _plain_gemm[grid](
                    x,
                    w,
                    y,
                    m,
                    n,
                    k,
                    x.stride(0),
                    w.stride(0),
                    y.stride(0),
                    BLOCK_M=bm,
                    BLOCK_N=bn,
                    BLOCK_K=bk,
                    num_warps=warps,
                    num_stages=stages,
                )

            try:
                compiled = fn()
                sync()
                row.update(
                    rel_err=rel_err(y, ref),
                    regs=getattr(compiled, "n_regs", None),
                    spills=getattr(compiled, "n_spills", None),
                    shared=getattr(getattr(compiled, "metadata", None), "shared", None),
                )
                row["graph_us"], note = (None, NO_CUDA) if CPU else measure("graph", fn, 5 if m >= 1024 else 20)
                row["status"] = ("ok" if row["rel_err"] < 5 * TOL[x.dtype] else "WRONG RESULT") + (
                    f"; {note}" if note else ""
                )
            except Exception as e:  # noqa: BLE001
                row["status"] = error_text(e)
            REPORT["plain_gemm"].append(row)
            log(f"plain GEMM {name} {cfg}: {row.get('graph_us')}")
        dump()


# ---------------------------------------------------------------- driver


def over_budget():
    return elapsed() > BUDGET


def step(name, fn, *args):
    if over_budget():
        REPORT["steps"].append(dict(step=name, status=OVER_BUDGET))
        log(f"{name}: {OVER_BUDGET}")
        return
    t0 = elapsed()
    log(f"{name} ...")
    try:
        fn(*args)
        status = "done"
    except Exception as e:  # noqa: BLE001
        status = error_text(e)
        REPORT["errors"].append({"what": name, "error": status, "trace": traceback.format_exc()[-3000:]})
        log(f"{name} FAILED: {status}")
    REPORT["steps"].append(dict(step=name, status=status, seconds=round(elapsed() - t0, 1)))
    dump()


def quick_autotune(rep_ms):
    """The autotuners benchmark each config with triton.testing.do_bench for rep_ms instead of 100 ms (the
    report's own measurements then decide; the run fits its budget)."""
    if CPU or rep_ms <= 0:
        return
    import triton.testing

    def bench(kernel_call, quantiles):
        return triton.testing.do_bench(kernel_call, warmup=max(5, rep_ms / 4), rep=rep_ms, quantiles=quantiles)

    for autotuner in (ft._fused_lora_autotuned, ft._decode_autotuned):
        autotuner.__dict__["do_bench"] = bench  # do_bench is a cached_property: the instance value wins


def meta():
    try:
        import numpy

        numpy_version = numpy.__version__
    except ImportError:
        numpy_version = None
    info = dict(
        cpu_mode=CPU,
        torch=torch.__version__,
        triton=triton.__version__,
        numpy=numpy_version,
        python=platform.python_version(),
        budget_s=BUDGET,
        autotune_rep_ms=OPTIONS.autotune_rep,
        alpha=ALPHA,
        rank=RANK,
        docs=DOCS,
        time_dtype=TIME_DTYPE,
        started=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    if not CPU:
        props = torch.cuda.get_device_properties(0)
        info.update(
            device=torch.cuda.get_device_name(),
            capability=list(torch.cuda.get_device_capability()),
            sms=props.multi_processor_count,
            l2_bytes=getattr(props, "L2_cache_size", None),
            cuda=torch.version.cuda,
            peak_dram_gbps=peak_gbps(),
        )
    return info


# ---------------------------------------------------------------- markdown


def fmt(v, digits=1):
    if v is None:
        return "–"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.{digits}f}" if abs(v) >= 0.01 or v == 0 else f"{v:.1e}"
    return str(v)


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def cfg_text(cfg):
    if not isinstance(cfg, dict):
        return "–"
    keys = [
        ("BLOCK_M", "M"),
        ("BLOCK_N", "N"),
        ("BLOCK_K", "K"),
        ("num_warps", "w"),
        ("num_stages", "s"),
        ("SPLIT_K", "split"),
    ]
    return " ".join(f"{short}{cfg[key]}" for key, short in keys if key in cfg)


TIMING_COLUMNS = [
    "shape",
    "M",
    "docs",
    "F.linear events",
    "F.linear graph",
    "fused API events",
    "fused API host",
    "raw (D,in,r) graph",
    "cat API events",
    "cat API host",
    "raw inject graph",
    "raw kT graph",
    "restack graph",
    "unfused events",
    "unfused graph",
    "merge events",
    "kT graph / linear graph",
    "(D,in,r) graph / kT graph",
    "MB moved",
    "GB/s",
    "% peak",
    "TFLOPS kT / linear",
    "autotuned config (D,in,r) / kT",
]


def markdown():
    info = REPORT["meta"]
    peak = info.get("peak_dram_gbps")
    l2 = info.get("l2_bytes") or 0
    lines = [
        f"# Fused LoRA linear kernel report: {info.get('device', 'CPU dry run (Triton interpreter)')}",
        "",
        f"torch {info['torch']}, triton {info['triton']}, numpy {info['numpy']}; "
        f"{'SMs ' + str(info.get('sms')) + ', L2 ' + fmt(l2 / 2**20) + ' MiB, ' if not CPU else ''}"
        f"peak DRAM {fmt(peak, 0)} GB/s (triton.testing.get_dram_gbps); time dtype {clean(TIME_DTYPE)}, rank "
        f"{RANK}, α {ALPHA:g}; elapsed {fmt(elapsed())} s of budget {BUDGET:g} s; autotuner benchmark rep "
        f"{OPTIONS.autotune_rep:g} ms.",
        "",
    ]
    # (i)
    checks = REPORT["correctness"]
    failed = [c for c in checks if c.get("ok") is False]
    lines += [
        f"## (i) Correctness vs float64 reference: {sum(1 for c in checks if c.get('ok'))} ok, "
        f"{len(failed)} failed, {sum(1 for c in checks if c.get('ok') is None)} skipped",
        "",
        "| case | dtype | M | shape | path | rel err | LoRA-term rel err | empty rows rel err | ok |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in checks:
        lines.append(
            f"| {c['case']} | {clean(c['dtype'])} | {c.get('m', '–')} | {c.get('shape', '–')} | {c['path']} "
            f"| {fmt(c.get('rel_err'))} | {fmt(c.get('lora_rel_err'))} | {fmt(c.get('empty_rows_rel_err'))} "
            f"| {'ok' if c.get('ok') else (c.get('note') or c.get('error') or '**FAIL**')} |"
        )
    # (ii)
    lines += [
        "",
        "## (ii) Timings, µs per call (median)",
        "",
        "events = CUDA events around back-to-back calls (host overhead included where it exceeds GPU time); "
        "host = CPU µs per call; graph = GPU time only (20 calls captured in a CUDA graph, replayed). "
        "Layouts of B: (D,in,r) = public op, inject = row-major torch.cat(dim=1) (prag_core's old layout), "
        "kT = cat_rank "
        "(B_catᵀ contiguous); restack = (D,in,r) → kT copy on every call + kT kernel. "
        "GB/s, % peak and TFLOPS from the kT graph time; (L2) = W fits in L2, so bandwidth is not DRAM's. "
        "The autotuner's key (M bucket, N, K, R_PAD, dtypes) holds no strides: the inject and kT launches reuse "
        "the config tuned on (D,in,r) (section iii times them per config).",
        "",
        "| " + " | ".join(TIMING_COLUMNS) + " |",
        "|" + "---|" * len(TIMING_COLUMNS),
    ]
    for r in REPORT["timing"]:
        if "linear_events" not in r:
            lines.append(
                f"| {r['shape']} | {r['m']} | {r.get('docs')} | "
                + " | ".join(["–"] * (len(TIMING_COLUMNS) - 4))
                + f" | {r['notes'].get('all', '')} |"
            )
            continue
        kt = r.get("raw_kT_graph")
        gbps = None if kt is None else r["moved_bytes"] / kt / 1e3
        share = None if gbps is None or not peak else 100 * gbps / peak
        in_l2 = " (L2)" if l2 and r["w_bytes"] < l2 else ""
        tf_kt = None if kt is None else r["flops"] / kt / 1e6
        tf_lin = None if r.get("linear_graph") is None else 2 * r["m"] * r["n"] * r["k"] / r["linear_graph"] / 1e6
        split = f" split {r['split_k']}" if r.get("split_k", 1) > 1 else ""
        lines.append(
            f"| {r['shape']} | {r['m']} | {r['docs']} | {fmt(r.get('linear_events'))} | {fmt(r.get('linear_graph'))} "
            f"| {fmt(r.get('api_events'))} | {fmt(r.get('api_host'))} | {fmt(r.get('raw_dinr_graph'))} "
            f"| {fmt(r.get('cat_api_events'))} | {fmt(r.get('cat_api_host'))} | {fmt(r.get('raw_inject_graph'))} "
            f"| {fmt(kt)} | {fmt(r.get('restack_graph'))} | {fmt(r.get('unfused_events'))} "
            f"| {fmt(r.get('unfused_graph'))} | {fmt(r.get('merge_events'))} "
            f"| {fmt(ratio(kt, r.get('linear_graph')), 2)}× | {fmt(ratio(r.get('raw_dinr_graph'), kt), 2)}× "
            f"| {fmt(r['moved_bytes'] / 1e6, 3)} | {fmt(gbps, 0)}{in_l2} | {fmt(share, 0)}{in_l2} "
            f"| {fmt(tf_kt, 0)} / {fmt(tf_lin, 0)} "
            f"| {cfg_text(r.get('config_dinr'))} / {cfg_text(r.get('config_kT'))}{split} |"
        )
    notes = [
        f"{r['shape']} M={r['m']} {k}: {v}"
        for r in REPORT["timing"]
        for k, v in r.get("notes", {}).items()
        if v not in (NO_CUDA, OVER_BUDGET)
    ]
    if notes:
        lines += ["", "Measurement errors:", ""] + [f"- {n}" for n in notes]
    if REPORT["host_breakdown"]:
        rows = REPORT["host_breakdown"]
        lines += [
            "",
            "## (ii-b) Host µs per decode call, piece by piece (CPU time of un-synchronised calls)",
            "",
            "| piece | what | "
            + " | ".join(
                f"{r['shape']} M={r['m']} ({r['launches']} launch{'es' if r['launches'] > 1 else ''})" for r in rows
            )
            + " |",
            "|---|---|" + "---|" * len(rows),
        ]
        for item, what in HOST_ITEMS:
            lines.append(
                f"| {item} | {what} | "
                + " | ".join(
                    fmt(r["host_us"].get(item)) if r["host_us"].get(item) is not None else r["notes"].get(item, "–")
                    for r in rows
                )
                + " |"
            )
        lines.append(
            "| GPU time | raw launcher inside a CUDA graph | "
            + " | ".join(fmt(r.get("gpu_graph_us")) for r in rows)
            + " |"
        )
    # (iii)
    lines += [
        "",
        "## (iii) Prefill configs (config= to fused_lora_linear_triton), graph µs",
        "",
        "| shape | M | layout | config | graph µs | / F.linear graph | TFLOPS | rel err | regs | spills "
        "| shared KB | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in REPORT["prefill_configs"]:
        lines.append(_config_line(r, r.get("flops")))
    lines += [
        "",
        "## (iii) Decode configs × SPLIT_K, graph µs (M ≤ 16; auto = the split launches() picks)",
        "",
        "| shape | M | layout | config | graph µs | / F.linear graph | GB/s | % peak | rel err | regs | spills "
        "| shared KB | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in REPORT["decode_configs"]:
        lines.append(_config_line(r, None, peak))
    lines += [
        "",
        "## (iii) Plain Triton GEMM (same tiles/masks/loop, no LoRA): the ceiling of a config",
        "",
        "| shape | M | config | graph µs | TFLOPS | rel err | regs | spills | shared KB | status |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in REPORT["plain_gemm"]:
        t = r.get("graph_us")
        lines.append(
            f"| {r['shape']} | {r['m']} | {cfg_text(r.get('config'))} | {fmt(t)} "
            f"| {fmt(None if t is None else r['flops'] / t / 1e6, 0)} | {fmt(r.get('rel_err'))} "
            f"| {fmt(r.get('regs'))} | {fmt(r.get('spills'))} "
            f"| {fmt(None if r.get('shared') is None else r['shared'] / 1024, 0)} | {r.get('status')} |"
        )
    lines += ["", "## Summary", ""] + summary_lines(peak)
    if REPORT["errors"]:
        lines += ["", f"## Errors ({len(REPORT['errors'])}, traces in the JSON)", ""]
        lines += [f"- {e['what']}: {e['error']}" for e in REPORT["errors"][:40]]
    lines += [
        "",
        "Steps: " + "; ".join(f"{s['step']} {s['status']} ({s.get('seconds', 0)} s)" for s in REPORT["steps"]),
    ]
    return "\n".join(lines) + "\n"


def _config_line(r, flops=None, peak=None):
    t = r.get("graph_us")
    kernels = r.get("kernels") or []
    regs = "/".join(fmt(x.get("regs")) for x in kernels) or "–"
    spills = "/".join(fmt(x.get("spills")) for x in kernels) or "–"
    shared = "/".join(fmt(None if x.get("shared") is None else x["shared"] / 1024, 0) for x in kernels) or "–"
    cfg = cfg_text(r.get("config"))
    if (
        r.get("auto_split") is not None
        and isinstance(r.get("config"), dict)
        and r["config"].get("SPLIT_K") == r["auto_split"]
    ):
        cfg += " (auto)"
    base = r.get("linear_graph_us")
    cols = [r.get("shape", "–"), str(r.get("m", "–")), r.get("layout", "–"), cfg, fmt(t), f"{fmt(ratio(t, base), 2)}×"]
    if flops is not None or "moved_bytes" not in r:
        cols.append(fmt(None if t is None or not flops else flops / t / 1e6, 0))
    else:
        gbps = None if t is None else r["moved_bytes"] / t / 1e3
        cols += [fmt(gbps, 0), fmt(None if gbps is None or not peak else 100 * gbps / peak, 0)]
    cols += [fmt(r.get("rel_err")), regs, spills, shared, str(r.get("status", "–"))]
    return "| " + " | ".join(cols) + " |"


def summary_lines(peak):
    out = []
    for section, label in (("prefill_configs", "prefill"), ("decode_configs", "decode")):
        groups = {}
        for r in REPORT[section]:
            if str(r.get("status", "")).startswith("ok") and r.get("graph_us"):
                groups.setdefault((r["shape"], r["m"], r["layout"]), []).append(r)
        for (shape, m, layout), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
            best = min(rows, key=lambda r: r["graph_us"])
            out.append(
                f"- best {label} config, {shape} M={m} {layout}: {cfg_text(best['config'])} "
                f"{fmt(best['graph_us'])} µs = {fmt(ratio(best['graph_us'], best.get('linear_graph_us')), 2)}× "
                f"F.linear (graph)"
            )
    for r in REPORT["timing"]:
        if r.get("m", 0) <= 16 and r.get("api_events") and r.get("api_host") and r.get("raw_dinr_graph"):
            out.append(
                f"- decode {r['shape']} M={r['m']}: public op {fmt(r['api_events'])} µs (events) vs host "
                f"{fmt(r['api_host'])} µs/call vs GPU {fmt(r['raw_dinr_graph'])} µs ((D,in,r) graph), "
                f"{fmt(r.get('raw_kT_graph'))} µs (kT graph), F.linear graph {fmt(r.get('linear_graph'))} µs: "
                f"{'host-bound' if r['api_host'] > 0.8 * r['api_events'] else 'GPU-bound'}"
            )
    return out or ["- (no GPU numbers)"]


# ---------------------------------------------------------------- main


def main():
    if not CPU and not torch.cuda.is_available():
        sys.exit("kernel_report.py: no CUDA GPU here; run with --cpu for the dry run")
    REPORT["meta"] = meta()
    quick_autotune(OPTIONS.autotune_rep)
    log(f"start: {REPORT['meta']}")
    dump()
    names = list(SHAPES)
    others = [n for n in names if n not in LLAMA8]
    first_dtype, second_dtype = CHECK_DTYPES
    # most decisive first; the budget cuts from the end
    step(f"correctness {clean(first_dtype)}", run_correctness, first_dtype)
    step("timing Llama-3-8B", run_timing, LLAMA8, MS)
    step("host breakdown", run_host_breakdown, LLAMA8)
    step("prefill configs", run_prefill_experiments, LLAMA8)
    step("decode configs Llama-3-8B", run_decode_experiments, LLAMA8)
    step(f"correctness {clean(second_dtype)}", run_correctness, second_dtype)
    step("plain Triton GEMM", run_plain_gemm, LLAMA8[:1])
    step("timing other shapes", run_timing, others, MS, False)
    step(
        "decode configs Llama-3.2-1B down",
        run_decode_experiments,
        [n for n in names if "1B down" in n] or others[:1],
        (1,),
    )
    text = markdown()
    print(text)
    md = OPTIONS.md or (OPTIONS.out.with_suffix(".md") if OPTIONS.out else None)
    if md:
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(text)
    dump()
    failed = [c for c in REPORT["correctness"] if c.get("ok") is False]
    log(f"done: {len(failed)} failed checks, {len(REPORT['errors'])} errors")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""One prepared GPU run that decides: both Triton paths checked and timed against the baselines, the dispatch table
written from the measurements, the targets of issue 34 stated.

    make bench-gpu                                                       H100/H200: ≤ 8 min with decode_report.py
    PYTHONPATH=kernels python bench/gpu/kernel_report.py --out bench/results/gpu-report.json [--table PATH]
    python bench/gpu/kernel_report.py --cpu --out DIR/gpu-report.json    dry run: Triton interpreter, tiny shapes
    python bench/gpu/kernel_report.py --render --out RESULTS/gpu-report.json --decode RESULTS/gpu-decode.json

Writes the raw numbers to --out (JSON, rewritten after every key, so a run cut short keeps what it measured), the
markdown to --md (default: --out with .md) and stdout, and the dispatch table to --table (default: the package's
kernels/prag_kernels/dispatch_table.json on a GPU; with --cpu, dispatch_table.json beside --out: never the shipped
one). --render writes the markdown again from --out's JSON and decode_report.py's (--decode) and measures nothing:
`make bench-gpu` runs it last, so that the decode targets get their numbers. --budget S: no step or key starts after
S seconds (default 300; --cpu 90); what is left is reported as skipped.

In run order (the budget cuts from the end), after the peak DRAM bandwidth (a 1 GiB device copy):
  1. correctness, bf16 then fp16 (--cpu: fp32 and fp16, the interpreter's bf16 dot being broken): 14 cases (decode
     one launch, split-K, 5 forced ragged chunks, prefill middle/large bucket and M 4096, per-row sets, sets per
     batch element, empty rows, strided x, bias) through four entries against the float64 reference: the raw
     launcher on each path ("fused", "delta") into a NaN-poisoned out= with the injection layer's operands, the
     public fused_lora_linear ((D, in, r) pairs, row_docs) and fused_lora_linear_cat, both backend="triton" (the
     table's path).
  2. timings per key (dtype, FFN shape, M, rows): bf16 for Llama-3-8B, Llama-3.2-1B and SmolLM2-135M (up: hidden →
     intermediate, and down), then fp16 in the same order; M in 1, 4, 16, 64, 512, 4096; rows "all" (3 documents)
     and "per-row" (3 of 32 loaded documents per row, row_mask: the document pool's default, what prag serve
     runs). Each thing timed first has its output checked against the float64 reference: F.linear; path "fused"
     for every config the autotuner's pruner allows (and which one the autotuner picks); path "delta" for every
     DELTA_CONFIGS entry the compile gate compiled for the call (and which one is the rule's); unfused torch
     F.linear(x, W) + α ((x B) ⊙ w) Aᵀ; merge + linear + restore (rows "all"); PEFT's mixed-adapter forward
     (per-row, eager, one operand set, where peft is installed). Then the key's table entry is written (the
     fastest correct candidate; never a path that failed a correctness check in its dtype) and the public op
     (fused_lora_linear_cat, backend="triton": what the table picks) is timed, graph and eager.
  3. host µs of one decode call, piece by piece (after the bf16 Llama-3-8B keys).

graph = GPU µs per call: back-to-back calls captured in one CUDA graph, the graph replayed (median of 5 batches);
eager = CUDA events around back-to-back calls (host overhead counts where it exceeds the GPU time). The calls rotate
over copies of the operands that together exceed the L2 three times, so that W streams from DRAM as in a model's
layers. Bytes moved: W, x, y, the stacked pairs and the row weights, each once.
"""

import argparse
import itertools
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]
PARSER = argparse.ArgumentParser(description=__doc__.splitlines()[0])
PARSER.add_argument("--cpu", action="store_true", help="dry run: tiny shapes, Triton interpreter, no timings")
PARSER.add_argument("--out", type=Path, help="raw JSON here (default: none)")
PARSER.add_argument("--md", type=Path, help="markdown here too (default: --out with suffix .md)")
PARSER.add_argument("--table", type=Path, help="dispatch table to write (default: the package's; --cpu: beside --out)")
PARSER.add_argument("--budget", type=float, help="seconds after which no step or key starts (default 300, --cpu 90)")
PARSER.add_argument("--autotune-rep", type=float, default=10.0, help="ms the autotuner times each config (0: Triton's)")
PARSER.add_argument("--render", action="store_true", help="only write the markdown again from --out's JSON")
PARSER.add_argument("--decode", type=Path, help="decode_report.py's JSON, for the decode targets (with --render)")
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
    dispatch,
    fused_lora_linear,
    fused_lora_linear_cat,
    fused_lora_linear_triton,
    merge_lora_,
    reference_fused_lora_linear,
    restore_,
)
from prag_kernels import fused_lora_triton as ft  # noqa: E402
from prag_kernels.torch_path import cat_rank  # noqa: E402

if CPU:
    torch.set_num_threads(1)  # tiny shapes: on a loaded machine thread barriers cost more than threads give
START = time.perf_counter()
BUDGET = OPTIONS.budget if OPTIONS.budget is not None else (90.0 if CPU else 300.0)
# per-row keys: 3 documents of the 32 a default document pool holds (MAX_COLUMNS // rank: R_PAD 64), as in serving
ALPHA, RANK, DOCS, LOADED = 16.0, 2, 3, 32
DEVICE = "cpu" if CPU else "cuda"
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
NAMES = dispatch.DTYPES  # dtype -> "bf16", "fp16", "fp32"
MAX_SETS = 32  # operand copies the timed calls rotate over, at most
TARGET_CARDS = ("H100", "H200")

if CPU:
    CHECK_DTYPES, TIME_DTYPES = (torch.float32, torch.float16), (torch.float16,)
    # (label, model, in, out); the long-K one runs the split-K decode (8 "SMs" on the CPU)
    SHAPES = [("tiny up", "tiny", 64, 96), ("tiny long-K", "tiny", 2304, 160)]
    SMALL_UP, SMALL_DOWN = (64, 96), (96, 64)
    MS = (1, 37)
else:
    CHECK_DTYPES = TIME_DTYPES = (torch.bfloat16, torch.float16)
    MODELS = (("Llama-3-8B", 4096, 14336), ("Llama-3.2-1B", 2048, 8192), ("SmolLM2-135M", 576, 1536))
    SHAPES = [
        (f"{model} {direction}", model, k, n)
        for model, hidden, inter in MODELS
        for direction, k, n in (("up", hidden, inter), ("down", inter, hidden))
    ]
    SMALL_UP, SMALL_DOWN = SHAPES[-2][2:], SHAPES[-1][2:]
    MS = (1, 4, 16, 64, 512, 4096)
TARGET_MODEL = SHAPES[0][1]  # the targets are Llama-3-8B's FFN shapes
UP, DOWN = SHAPES[0][2:], SHAPES[1][2:]  # correctness: a wide and a long-K shape (split-K at decode)

REPORT = {"meta": {}, "correctness": [], "timing": [], "host": [], "steps": [], "errors": []}
ENTRIES = {}  # table key -> entry, this device's
OVER_BUDGET = "skipped (time budget)"


# ---------------------------------------------------------------- small helpers


def elapsed():
    return time.perf_counter() - START


def over_budget():
    return elapsed() > BUDGET


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
        return NAMES.get(v, str(v))
    return v


def dump():
    REPORT["meta"]["elapsed_s"] = round(elapsed(), 1)
    if OPTIONS.out:
        tmp = OPTIONS.out.with_suffix(OPTIONS.out.suffix + ".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(clean(REPORT), indent=1))
        tmp.replace(OPTIONS.out)


def error_text(e):
    return f"{type(e).__name__}: {e}".replace("\n", " ")[:300]


def record_error(what, e):
    REPORT["errors"].append({"what": what, "error": error_text(e), "trace": traceback.format_exc()[-2000:]})


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


def config_dict(config):
    """A triton.Config as the config= dict the launcher and the table take."""
    return dict(config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)


def cfg_text(cfg):
    if not isinstance(cfg, dict):
        return "–"
    keys = (("BLOCK_M", "M"), ("BLOCK_N", "N"), ("BLOCK_K", "K"), ("num_warps", "w"), ("num_stages", "s"))
    keys += (("SPLIT_K", "split"), ("N_SPLIT", "chunks"))
    return " ".join(f"{short}{cfg[key]}" for key, short in keys if key in cfg)


# ---------------------------------------------------------------- timing (CUDA only)


def events_us(fn, target_s=0.004, samples=5):
    """Median µs per call of back-to-back calls fn(0), fn(1), …: CUDA events around each batch of calls."""
    counter = itertools.count()

    def call():
        return fn(next(counter))

    call()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    call()
    torch.cuda.synchronize()
    calls = max(1, min(200, int(target_s / max(time.perf_counter() - t0, 1e-6))))
    out = []
    for _ in range(samples):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(calls):
            call()
        end.record()
        end.synchronize()
        out.append(begin.elapsed_time(end) * 1e3 / calls)
    return statistics.median(out)


def graph_us(fn, calls):
    """Median GPU µs per call: fn(0) … fn(calls - 1) captured in one CUDA graph, the graph replayed."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up off the capture: compiles, autotuning, allocator
        fn(0)
        fn(1)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(i)
    return events_us(lambda _: graph.replay()) / calls


def host_us(fn, calls=50, samples=3):
    """Median CPU µs per call: perf_counter around un-synchronised calls (the launch queue absorbs them)."""
    fn()
    sync()
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        out.append((time.perf_counter() - t0) * 1e6 / calls)
        sync()
    return statistics.median(out)


def measure(what, fn, expected, dtype, calls, mode="graph", poison=()):
    """{"us", "rel_err", "ok"[, "error"]}: fn(0)'s output (the `poison` outputs NaN before it) against the float64
    `expected`, then µs per call, "graph" or "eager" (none on the CPU). A failure is a row, not a crash."""
    try:
        for out in poison:
            out.fill_(float("nan"))
        y = fn(0)
        sync()
        err = rel_err(y, expected)
        result = dict(rel_err=err, ok=err < TOL[dtype], us=None)
        if not CPU:
            result["us"] = graph_us(fn, calls) if mode == "graph" else events_us(fn)
        return result
    except Exception as e:  # noqa: BLE001 - a config that fails to compile or run is a row with its error
        try:
            sync()
        except Exception:  # noqa: BLE001
            pass
        record_error(what, e)
        return dict(rel_err=None, ok=False, us=None, error=error_text(e))


def peak_dram_gbps():
    """GB/s of a 1 GiB device-to-device copy, bytes read plus written (METHOD.md: measure the ceiling once)."""
    src = torch.randint(0, 256, (1 << 30,), dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    return 2 * src.numel() / events_us(lambda _: dst.copy_(src), target_s=0.02) / 1e3


# ---------------------------------------------------------------- operands


def generator(seed):
    return torch.Generator(DEVICE).manual_seed(seed)


def operands(k, n, m, dtype, docs=DOCS, bias=False, seed=0, strided=False):
    """x (m, k), W (n, k), bias or None, A (docs, n, r), B (docs, k, r), drawn on the device: values like a trained
    adapter's, the documents' term about as large as the base. strided: x's rows 64 elements apart beyond k."""
    g = generator(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device=DEVICE) * scale).to(dtype)

    x = randn(m, k + (64 if strided else 0))[:, :k]
    w = randn(n, k, scale=k**-0.5)
    b = randn(n, scale=0.1) if bias else None
    return x, w, b, randn(docs, n, RANK, scale=0.02), randn(docs, k, RANK, scale=k**-0.5)


def row_sets(groups, docs, mode="docs", seed=1):
    """(groups, 3) document ids of `docs`: 3 distinct per row; "holes": some -1 slots; "empty": also every other row
    all -1."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.stack([torch.randperm(docs, generator=g)[:3] for _ in range(groups)])
    if mode in ("holes", "empty"):
        rows[::5, 2] = -1
    if mode == "empty":
        rows[::2, :] = -1
    return rows.to(DEVICE)


def fused_configs(x, n, r_pad):
    """The fused path's configs the autotuner's pruner allows for this call, as config= dicts."""
    m, k = x.shape
    if m <= ft.DECODE_M:
        named = {"x_ptr": x, "K_SPLIT": ft.split_k(n, k, ft._sm_count(x.device))[1]}
        return [config_dict(c) for c in ft._decode_configs_for(ft.DECODE_CONFIGS, named, R_PAD=r_pad)]
    named = {"x_ptr": x, "M_BUCKET": ft.m_bucket(m)}
    return [config_dict(c) for c in ft._prefill_configs_for(ft.PREFILL_CONFIGS, named, R_PAD=r_pad)]


def delta_configs(x, r_pad):
    """The DELTA_CONFIGS entries the compile gate compiled for this call: operand size, R_PAD, BLOCK_M ≤ 16 at
    decode and > 16 at prefill (the table may name only these)."""
    decode = x.shape[0] <= ft.DECODE_M
    return [
        config_dict(c)
        for c in ft.DELTA_CONFIGS
        if c.operand_bytes == x.element_size()
        and r_pad <= c.r_pad_max
        and (c.kwargs["BLOCK_M"] <= ft.DECODE_M) == decode
    ]


def launch_kind(path, x, n, config=None):
    """Which launch path a call takes: fused decode one launch / split-K, fused prefill, delta decode / prefill."""
    m, k = x.shape
    if path == "delta":
        return "delta decode" if m <= ft.DECODE_M else "delta prefill"
    if m > ft.DECODE_M:
        return "fused prefill"
    split = (config or {}).get("SPLIT_K") or ft.split_k(n, k, ft._sm_count(x.device))[0]
    return "fused decode, split-K" if split > 1 else "fused decode, one launch"


# ---------------------------------------------------------------- 1. correctness


def correctness_cases():
    big = not CPU
    return [
        dict(what="decode, one launch", shape=UP, m=1),
        dict(what="decode, split-K, bias", shape=DOWN, m=16, bias=True),
        dict(
            what="decode, 5 K chunks (fused) / 5 column chunks (delta) forced, last ragged", shape=DOWN, m=3, forced=1
        ),
        dict(what="prefill, middle bucket, bias", shape=SMALL_DOWN, m=37, bias=True),
        dict(what="prefill, large bucket", shape=UP, m=512 if big else 300),
        dict(what="prefill, largest M", shape=DOWN, m=4096 if big else 64),
        dict(what="per-row sets, decode", shape=DOWN, m=8, rows="holes"),
        dict(what="per-row sets, prefill, bias", shape=SMALL_UP, m=64, rows="holes", bias=True),
        dict(what="a set per batch element, x (2, 4, in), decode", shape=UP, lead=(2, 4), rows="holes"),
        dict(what="a set per batch element, x (4, 16, in), prefill", shape=SMALL_UP, lead=(4, 16), rows="holes"),
        dict(what="empty rows (all slots -1), decode", shape=UP, m=16, rows="empty"),
        dict(what="empty rows (all slots -1), prefill", shape=SMALL_DOWN, m=48, rows="empty"),
        dict(what="strided x (row stride in + 64), decode", shape=UP, m=5, strided=True),
        dict(what="strided x (row stride in + 64), prefill", shape=SMALL_UP, m=40, strided=True),
    ]


def check_case(case, dtype):
    """The case through the four entries (only the raw launcher's two paths when configs are forced)."""
    k, n = case["shape"]
    lead = case.get("lead")
    m = math.prod(lead) if lead else case["m"]
    docs = LOADED if case.get("rows") else DOCS
    seed = zlib.crc32(case["what"].encode()) % 1000
    x, w, bias, a, b = operands(k, n, m, dtype, docs, case.get("bias", False), seed, case.get("strided", False))
    groups = lead[0] if lead else m
    row_docs = row_sets(groups, docs, case["rows"]) if case.get("rows") else None
    per_row = None if row_docs is None else row_docs.repeat_interleave(m // groups, dim=0)
    bias64 = None if bias is None else bias.double()
    ref = reference_fused_lora_linear(x.double(), w.double(), bias64, a.double(), b.double(), ALPHA, per_row)
    base = x.double() @ w.double().T + (0 if bias is None else bias64)
    empty = None if per_row is None else (per_row < 0).all(1)
    x_in = x.view(*lead, k) if lead else x
    mask = None if row_docs is None else column_mask(row_docs, docs, RANK, dtype)
    a_cat, b_cat = cat_rank(a), cat_rank(b)  # the injection layer's operands: a_cat.T and b_cat.T contiguous
    r_pad = dispatch.r_pad(docs * RANK)
    forced = {}
    if case.get("forced"):
        forced = dict(
            fused=dict(fused_configs(x, n, r_pad)[0], SPLIT_K=5),
            delta=dict(ft.delta_config(m, x.element_size()), N_SPLIT=5),
        )

    def raw(path):
        out = torch.full((m, n), float("nan"), device=DEVICE, dtype=dtype)
        return fused_lora_linear_triton(
            x, w, bias, a_cat[None], b_cat[None], ALPHA, row_mask=mask, out=out, config=forced.get(path), path=path
        )

    entries = {f"raw launcher, {p}": (p, forced.get(p), lambda p=p: raw(p)) for p in ("fused", "delta")}
    if not forced:
        path, config = dispatch.choose(x, n, docs * RANK, row_docs is not None)
        entries[f"fused_lora_linear → {path}"] = (
            path,
            config,
            lambda: fused_lora_linear(x_in, w, bias, a, b, ALPHA, row_docs, backend="triton"),
        )
        entries[f"fused_lora_linear_cat → {path}"] = (
            path,
            config,
            lambda: fused_lora_linear_cat(x_in, w, bias, a_cat, b_cat, ALPHA, mask, backend="triton"),
        )
    rows = []
    for entry, (path, config, fn) in entries.items():
        row = dict(case=case["what"], entry=entry, path=path, kind=launch_kind(path, x, n, config), dtype=dtype)
        row.update(shape=f"{k}→{n}", m=m, tol=TOL[dtype])
        try:
            y = fn().reshape(m, n)
            sync()
            err, lora_err = rel_err(y, ref), rel_err(y.double() - base, ref - base)
            empty_err = rel_err(y[empty], base[empty]) if empty is not None and empty.any() else None
            ok = err < TOL[dtype] and lora_err < 5 * TOL[dtype] and (empty_err is None or empty_err < TOL[dtype])
            row.update(rel_err=err, lora_rel_err=lora_err, empty_rows_rel_err=empty_err, ok=bool(ok))
        except Exception as e:  # noqa: BLE001
            row.update(ok=False, error=error_text(e))
            record_error(f"check {case['what']}, {entry}", e)
        rows.append(row)
    return rows


def run_correctness(dtype):
    for case in correctness_cases():
        if over_budget():
            REPORT["correctness"].append(dict(case=case["what"], dtype=dtype, entry="all", ok=None, note=OVER_BUDGET))
            continue
        for row in check_case(case, dtype):
            REPORT["correctness"].append(row)
            if not row["ok"]:
                log(f"CHECK FAILED {row}")
    dump()


def failed_paths(dtype):
    """The paths with a failed correctness check in this dtype: the table never names them for it."""
    return {c["path"] for c in REPORT["correctness"] if c.get("ok") is False and c["dtype"] == dtype}


# ---------------------------------------------------------------- 2. timings and the table


def weight_sets(k, n, dtype, seed):
    """Copies of W (n, k) and of LOADED documents' pairs, enough that together they exceed the L2 three times (one on
    the CPU): the timed calls rotate over them, so W streams from DRAM as it does across a model's layers."""
    one = (n * k + LOADED * RANK * (n + k)) * torch.empty((), dtype=dtype).element_size()
    count = 1 if CPU else min(MAX_SETS, math.ceil(3 * REPORT["meta"]["l2_bytes"] / one))
    sets = [operands(k, n, 0, dtype, LOADED, seed=seed + i) for i in range(count)]
    return [(w, a, b) for _, w, _, a, b in sets]


def key_sets(weights, m, docs, seed):
    """One operand set per weight copy, as the injection layer holds them: x (m, k), W, the first `docs` documents'
    pairs (D, n, r) / (D, k, r) for merge, a_cat (n, R) / b_cat (k, R) with a_cat.T and b_cat.T contiguous, out."""
    sets = []
    for i, (w, a, b) in enumerate(weights):
        x = torch.randn(m, w.shape[1], generator=generator(seed + i), device=DEVICE).to(w.dtype)
        a3, b3 = a[:docs], b[:docs]
        a_cat, b_cat = cat_rank(a3), cat_rank(b3)
        out = torch.empty(m, w.shape[0], device=DEVICE, dtype=w.dtype)
        sets.append(
            SimpleNamespace(x=x, w=w, a3=a3, b3=b3, a_cat=a_cat, b_cat=b_cat, a1=a_cat[None], b1=b_cat[None], out=out)
        )
    return sets


def references(s, mask):
    """(y, x Wᵀ) in float64 for set s: the reference's sum with the documents stacked (the same value; its per-row
    loop is too slow at M = 4096)."""
    x, w = s.x.double(), s.w.double()
    base = x @ w.T
    shrink = x @ s.b_cat.double()
    if mask is not None:
        shrink = shrink * mask.double()
    return base + ALPHA * shrink @ s.a_cat.double().T, base


def peft_forward(s, row_docs):
    """fn(i): PEFT's mixed-adapter forward on set s (one set, no rotation: building adapters is slow), one adapter
    per distinct document set among the rows (its documents side by side, rank 3·r: the same sum), named per row."""
    from peft import LoraConfig, get_peft_model

    doc_sets = sorted({tuple(r) for r in row_docs.tolist()})
    names = [f"set{doc_sets.index(tuple(r))}" for r in row_docs.tolist()]
    n, k = s.w.shape
    model = torch.nn.Sequential(torch.nn.Linear(k, n, bias=False, device="meta"))  # its W: the set's
    model[0].weight = torch.nn.Parameter(s.w, requires_grad=False)
    for j, docs in enumerate(doc_sets):
        rank = len(docs) * RANK  # PEFT scales by lora_alpha / r: lora_alpha = α·r gives α
        config = LoraConfig(r=rank, lora_alpha=ALPHA * rank, target_modules=["0"], init_lora_weights=False)
        if j == 0:
            model = get_peft_model(model, config, adapter_name="set0")
        else:
            model.add_adapter(f"set{j}", config)
        layer = model.base_model.model[0]
        with torch.no_grad():  # PEFT's A is our Bᵀ (r, in), its B our A (out, r)
            layer.lora_A[f"set{j}"].weight.copy_(torch.cat([s.b3[d] for d in docs], 1).T)
            layer.lora_B[f"set{j}"].weight.copy_(torch.cat([s.a3[d] for d in docs], 1))
    model.eval()  # adapter_names needs eval mode
    return lambda i: model(s.x, adapter_names=names)


def time_key(dtype, label, model, k, n, m, per_row, weights):
    """Every measurement of one key, its table entry written, then the public op timed as the table dispatches it."""
    docs = LOADED if per_row else DOCS
    seed = zlib.crc32(f"{label} {m} {per_row}".encode()) % 10000
    sets = key_sets(weights, m, docs, seed)
    row_docs = row_sets(m, docs, seed=seed) if per_row else None
    mask = None if row_docs is None else column_mask(row_docs, docs, RANK, dtype)
    ref, base = references(sets[0], mask)
    call_key = dispatch.key(dtype, m, k, n, docs * RANK, per_row)
    count = len(sets)
    calls = count * math.ceil((20 if m < 1024 else 5) / count)
    elem = sets[0].x.element_size()
    row = dict(dtype=dtype, shape=label, model=model, k=k, n=n, m=m, rows=call_key[5], r_pad=call_key[4], sets=count)
    row["moved_bytes"] = (n * k + m * k + m * n + docs * RANK * (n + k) + (m * docs * RANK if per_row else 0)) * elem
    outs = [s.out for s in sets]

    def timed(what, fn, expected=ref, mode="graph"):
        return measure(f"{label} M={m} {row['rows']} {what}", fn, expected, dtype, calls, mode, outs)

    def raw(path, config):
        def fn(i):
            s = sets[i % count]
            return fused_lora_linear_triton(
                s.x, s.w, None, s.a1, s.b1, ALPHA, row_mask=mask, out=s.out, config=config, path=path
            )

        return fn

    def unfused(i):
        s = sets[i % count]
        shrink = s.x @ s.b_cat
        return F.linear(s.x, s.w) + ALPHA * ((shrink if mask is None else shrink * mask) @ s.a_cat.T)

    def merged(i):
        s = sets[i % count]
        backup = merge_lora_(s.w, s.a3, s.b3, ALPHA)
        y = F.linear(s.x, s.w)
        restore_(s.w, backup)
        return y

    def public(i):
        s = sets[i % count]
        return fused_lora_linear_cat(s.x, s.w, None, s.a_cat, s.b_cat, ALPHA, mask, backend="triton")

    def linear(i):
        return F.linear(sets[i % count].x, sets[i % count].w)

    with torch.inference_mode():
        row["F.linear"] = timed("F.linear", linear, base)
        row["F.linear eager"] = timed("F.linear eager", linear, base, "eager")
        x0 = sets[0].x
        configs = [("fused", c) for c in fused_configs(x0, n, call_key[4])]
        configs += [("delta", c) for c in delta_configs(x0, call_key[4])]
        row["candidates"] = [
            dict(path=path, config=c, **timed(f"{path} {cfg_text(c)}", raw(path, c))) for path, c in configs
        ]
        row["autotuned"] = autotuned_choice(raw("fused", None), m)
        row["rule"] = ft.delta_config(m, elem)
        row["unfused"] = timed("unfused", unfused)
        if per_row:
            row["PEFT eager"] = peft_measure(sets, row_docs, timed)
        else:
            row["merge"] = timed("merge", merged)
        entry = table_entry(row, call_key)
        row["chosen"] = None if entry is None else {"path": entry["path"], "config": entry["config"]}
        if entry is not None:
            ENTRIES[call_key] = entry
            write_table()
        row["public"] = timed("public op", public)
        row["public eager"] = timed("public op eager", public, mode="eager")
    REPORT["timing"].append(row)
    return row


def autotuned_choice(fn, m):
    """The config the fused path's autotuner picks for this call (it times its configs on the first call)."""
    try:
        fn(0)
        sync()
    except Exception as e:  # noqa: BLE001
        record_error("autotune", e)
        return None
    autotuner = ft._decode_autotuned if m <= ft.DECODE_M else ft._fused_lora_autotuned
    return config_dict(autotuner.best_config)


def peft_measure(sets, row_docs, timed):
    try:
        fn = peft_forward(sets[0], row_docs)
    except ImportError:
        return dict(us=None, ok=None, note="skipped (no peft here)")
    except Exception as e:  # noqa: BLE001
        record_error("PEFT adapters", e)
        return dict(us=None, ok=False, error=error_text(e))
    return timed("PEFT eager", fn, mode="eager")


def table_entry(row, call_key):
    """The key's entry: the fastest candidate that is correct here and whose path passed every correctness check
    in this dtype (on the CPU nothing is timed: the first correct one, so that the plumbing runs), with the µs of
    the baselines beside it; None when no candidate qualifies."""
    bad = failed_paths(row["dtype"])
    good = [c for c in row["candidates"] if c["ok"] and c["path"] not in bad and (CPU or c["us"] is not None)]
    if not good:
        return None
    best = good[0] if CPU else min(good, key=lambda c: c["us"])
    dtype, m, k, n, r_pad, rows = call_key
    us = {"F.linear": row["F.linear"]["us"], "unfused": row["unfused"]["us"], "merge": row.get("merge", {}).get("us")}
    for path in dispatch.PATHS:
        us[path] = best_us(row, path)
    return dict(
        dtype=dtype, m=m, out=n, r_pad=r_pad, rows=rows, path=best["path"], config=best["config"], us=us, **{"in": k}
    )


def best_us(row, path):
    times = [c["us"] for c in row["candidates"] if c["path"] == path and c["ok"] and c["us"] is not None]
    return min(times, default=None)


def table_path():
    """--table, else the package's table on a GPU and dispatch_table.json beside --out (or in a temporary folder)
    with --cpu: a dry run never touches the shipped table."""
    if OPTIONS.table:
        path = OPTIONS.table
    elif not CPU:
        path = dispatch.TABLE
    else:
        folder = OPTIONS.out.parent if OPTIONS.out else Path(tempfile.mkdtemp(prefix="prag-kernel-report-"))
        path = folder / "dispatch_table.json"
    if CPU and path.resolve() == dispatch.TABLE.resolve():
        sys.exit("kernel_report.py --cpu: a dry run does not write the shipped dispatch table; pass another --table")
    return path


def write_table():
    """This device's entries so far into the table file; other devices' entries stay."""
    meta = REPORT["meta"]
    source = (
        f"bench/gpu/kernel_report.py {meta['started'][:10]}: graph-replay µs, torch {meta['torch']}, "
        f"triton {meta['triton']}" + (", CPU dry run (nothing timed)" if CPU else "")
    )
    dispatch.write_device(meta["device"], meta["capability"], list(ENTRIES.values()), source, path=meta["table"])


def prepare_table():
    """The run's table starts as a copy of the shipped one (when it is another file), and the dispatcher reads it:
    the public op's timings and checks then take the path this run wrote."""
    path = Path(REPORT["meta"]["table"])
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dispatch.TABLE, path)
    dispatch.TABLE = path
    dispatch.clear_caches()


def run_timing(dtype, model):
    for label, shape_model, k, n in SHAPES:
        if shape_model != model:
            continue
        weights = None
        for m, per_row in itertools.product(MS, (False, True)):
            rows = "per-row" if per_row else "all"
            if over_budget():
                skipped = dict(dtype=dtype, shape=label, model=model, k=k, n=n, m=m, rows=rows, status=OVER_BUDGET)
                REPORT["timing"].append(skipped)
                continue
            weights = weights or weight_sets(k, n, dtype, seed=zlib.crc32(label.encode()) % 10000)
            log(f"timing {NAMES[dtype]} {label} M={m} {rows}")
            time_key(dtype, label, model, k, n, m, per_row, weights)
            dump()
        del weights
        if not CPU:
            torch.cuda.empty_cache()


# ---------------------------------------------------------------- 3. host µs of a decode call


@triton.jit
def _noop(x_ptr):
    """An empty kernel with one argument: the floor of a Triton launch's host cost."""
    pid = tl.program_id(0)  # noqa: F841


def run_host():
    """Where a decode call's host µs go (the first shape, M 1, rows "all"): CPU µs per un-synchronised call of each
    piece (on the CPU each runs once, untimed)."""
    label, _, k, n = SHAPES[0]
    dtype = TIME_DTYPES[0]
    x, w, _, a, b = operands(k, n, 1, dtype)
    a_cat, b_cat = cat_rank(a), cat_rank(b)
    out = torch.empty(1, n, device=DEVICE, dtype=dtype)
    path, config = dispatch.choose(x, n, DOCS * RANK, False)

    def raw(path, config=None):
        return lambda: fused_lora_linear_triton(
            x, w, None, a_cat[None], b_cat[None], ALPHA, out=out, config=config, path=path
        )

    pieces = {
        "F.linear (cuBLAS), for scale": lambda: F.linear(x, w),
        "an empty Triton kernel, 1 argument": lambda: _noop[(1,)](x),
        "dispatch.choose: the table's answer": lambda: dispatch.choose(x, n, DOCS * RANK, False),
        "launches(): the table path's launch list": lambda: ft.launches(
            x, w, None, a_cat[None], b_cat[None], ALPHA, None, out, config, path=path
        ),
        "raw launcher, path fused (autotuned)": raw("fused"),
        "raw launcher, path delta (rule): cuBLAS + 1 launch": raw("delta"),
        "fused_lora_linear_cat, backend triton (the table's path)": lambda: fused_lora_linear_cat(
            x, w, None, a_cat, b_cat, ALPHA, backend="triton"
        ),
    }
    row = dict(shape=label, m=1, dtype=dtype, path=path, config=config, host_us={}, errors={})
    with torch.inference_mode():
        for what, fn in pieces.items():
            try:
                if CPU:
                    fn()  # the interpreter's µs mean nothing: run each piece once
                row["host_us"][what] = None if CPU else host_us(fn)
            except Exception as e:  # noqa: BLE001
                row["errors"][what] = error_text(e)
                record_error(f"host {what}", e)
    REPORT["host"].append(row)
    dump()


# ---------------------------------------------------------------- driver


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
        record_error(name, e)
        log(f"{name} FAILED: {status}")
    REPORT["steps"].append(dict(step=name, status=status, seconds=round(elapsed() - t0, 1)))
    dump()


def quick_autotune(rep_ms):
    """The autotuners time each config for rep_ms instead of Triton's 100 ms: this report times every config
    itself, the autotuner's pick is only reported."""
    if CPU or rep_ms <= 0:
        return
    import triton.testing

    def bench(kernel_call, quantiles):
        return triton.testing.do_bench(kernel_call, warmup=max(5, rep_ms / 4), rep=rep_ms, quantiles=quantiles)

    for autotuner in (ft._fused_lora_autotuned, ft._decode_autotuned):
        autotuner.__dict__["do_bench"] = bench  # do_bench is a cached_property: the instance value wins


def driver_version():
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True
        )
        return done.stdout.strip().splitlines()[0] if done.returncode == 0 else None
    except (OSError, IndexError):
        return None


def meta():
    info = dict(
        cpu_mode=CPU,
        device="cpu",  # the dispatcher's name for the interpreter's device
        capability=[0, 0],
        torch=torch.__version__,
        triton=triton.__version__,
        python=platform.python_version(),
        budget_s=BUDGET,
        autotune_rep_ms=OPTIONS.autotune_rep,
        alpha=ALPHA,
        rank=RANK,
        docs=DOCS,
        loaded=LOADED,
        started=time.strftime("%Y-%m-%d %H:%M:%S"),
        table=str(table_path()),
    )
    try:
        import peft

        info["peft"] = peft.__version__
    except ImportError:
        info["peft"] = None
    if not CPU:
        props = torch.cuda.get_device_properties(0)
        info.update(
            device=torch.cuda.get_device_name(),
            capability=list(torch.cuda.get_device_capability()),
            sms=props.multi_processor_count,
            l2_bytes=getattr(props, "L2_cache_size", 50 << 20),  # an H100's when torch does not say
            cuda=torch.version.cuda,
            driver=driver_version(),
        )
    return info


def measure_peak():
    REPORT["meta"]["peak_dram_gbps"] = peak_dram_gbps()


# ---------------------------------------------------------------- markdown


def fmt(v, digits=1):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) >= 0.01 or v == 0 else f"{v:.1e}"
    return str(v)


def md_row(*cells):
    return "| " + " | ".join(str(c) for c in cells) + " |"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def us_of(r, what):
    return (r.get(what) or {}).get("us")


ALL_ROWS = ("all", "per-row")
KERNEL_TARGETS = [  # (target, rows, Ms, baseline, test of chosen µs / baseline µs)
    ("chosen path ≤ 1.05× F.linear at M ≤ 16, rows all", ("all",), (1, 4, 16), "F.linear", ("≤", 1.05)),
    ("chosen path ≤ 1.10× F.linear at M ≤ 16, per-row sets", ("per-row",), (1, 4, 16), "F.linear", ("≤", 1.10)),
    ("chosen path ≤ 1.10× F.linear at M = 4096, rows all and per-row", ALL_ROWS, (4096,), "F.linear", ("≤", 1.10)),
    ("chosen path faster than unfused torch at every M", ALL_ROWS, MS, "unfused", ("<", 1.0)),
    ("chosen path faster than merge + linear + restore at every M", ("all",), MS, "merge", ("<", 1.0)),
]
DECODE_TARGETS = [  # (target, baseline variant, test of fused tokens/s / baseline tokens/s)
    ("decode tokens/s, 3 documents per row, ≥ 0.9× the base model's", "base", ("≥", 0.9)),
    ("decode tokens/s, 3 documents per row, ≥ 2× PEFT's mixed-adapter batch", "peft", ("≥", 2.0)),
]
TESTS = {"≤": lambda r, limit: r <= limit, "<": lambda r, limit: r < limit, "≥": lambda r, limit: r >= limit}


def judge(pairs, test):
    """(status, numbers) of a target over [(label, value, baseline)]: not met as soon as a measured pair fails the
    test, not measured while pairs are missing, else met; the numbers name the pair closest to failing."""
    op, limit = test
    measured = [(label, a, b) for label, a, b in pairs if a is not None and b is not None]
    if not measured:
        return "not measured", "–"
    passed = sum(TESTS[op](a / b, limit) for _, a, b in measured)
    label, a, b = (min if op == "≥" else max)(measured, key=lambda p: p[1] / p[2])
    numbers = f"worst: {label}, {fmt(a)} vs {fmt(b)} ({a / b:.2f}×); {passed} of {len(pairs)} pass"
    if passed < len(measured):
        return "**not met**", numbers
    return ("met" if len(measured) == len(pairs) else "not measured"), numbers


def kernel_targets(report):
    """The kernel targets over the bf16 keys of TARGET_MODEL: the public op's graph µs against a baseline's."""
    rows = {(r["shape"], r["m"], r["rows"]): r for r in report["timing"] if "public" in r and r["dtype"] == "bf16"}
    labels = [label for label, model, _, _ in SHAPES if model == TARGET_MODEL]
    out = []
    for target, kinds, ms, baseline, test in KERNEL_TARGETS:
        pairs = []
        for label, m, kind in itertools.product(labels, ms, kinds):
            r = rows.get((label, m, kind), {})
            pairs.append((f"{label} M={m} {kind}", us_of(r, "public"), us_of(r, baseline)))
        out.append((target, *judge(pairs, test), "µs, graph replay"))
    return out


def decode_targets(decode):
    """The decode targets over decode_report.py's rows: per model and batch, eager, and CUDA graphs where both the
    fused and the baseline row ran with them."""
    if decode is None:
        return [(target, "not measured", "–", "no decode_report.py JSON") for target, _, _ in DECODE_TARGETS]
    tps = {(r["model"], r["batch"], r["variant"], r.get("graphs")): r.get("tokens_per_s") for r in decode["decode"]}
    out = []
    for target, baseline, test in DECODE_TARGETS:
        pairs = []
        for model, batch in sorted({(model, batch) for model, batch, _, _ in tps}):
            for graphs in (False, True):
                fused, base = tps.get((model, batch, "fused", graphs)), tps.get((model, batch, baseline, graphs))
                if not graphs or (fused and base):
                    pairs.append((f"{model} batch {batch} {'graphs' if graphs else 'eager'}", fused, base))
        out.append((target, *judge(pairs, test), f"tokens/s on {decode['meta']['device']}"))
    return out


def targets_section(report, decode):
    """Each target met, not met or not measured: numbers from a CPU dry run or from another card decide none."""
    lines = [
        "## Targets of issue 34",
        "",
        f"H100 or H200, bf16, rank {RANK}, {DOCS} documents (per-row: 3 of {LOADED} loaded per row), {TARGET_MODEL} "
        "FFN shapes (up and down), graph replay; chosen path = the public op as the table dispatches it. Decode: "
        "decode_report.py's model, eager, and CUDA graphs where both rows were measured.",
        "",
        "| target | status | numbers |",
        "|---|---|---|",
    ]
    kernel = [(*t, not_deciding(report["meta"])) for t in kernel_targets(report)]
    decode_rows = [(*t, decode and not_deciding(decode["meta"])) for t in decode_targets(decode)]
    for target, status, numbers, unit, reason in kernel + decode_rows:
        status = f"not measured ({reason})" if reason else status
        lines.append(md_row(target, status, numbers if numbers == "–" else f"{numbers} ({unit})"))
    return lines


def not_deciding(meta):
    """Why a run's numbers decide no target (None: they do)."""
    if meta.get("cpu_mode"):
        return "CPU dry run"
    if not any(card in meta.get("device", "") for card in TARGET_CARDS):
        return f"{meta.get('device')} is no H100/H200"
    return None


def chosen_section(report):
    peak = report["meta"].get("peak_dram_gbps")
    lines = [
        "## The dispatch table: what each key measured and chose",
        "",
        "µs per call, graph replay unless marked eager; chosen = the fastest correct candidate (written to the table); "
        'public op = fused_lora_linear_cat, backend "triton", as the table then dispatches it; GB/s and % peak from '
        "the public op's graph time and the bytes it must move.",
        "",
        "| dtype | shape | M | rows | chosen | public op | × F.linear | F.linear | best fused | best delta | unfused "
        "| merge | PEFT eager | public op eager | F.linear eager | MB | GB/s | % peak | autotuned (fused) |",
        "|" + "---|" * 19,
    ]
    for r in report["timing"]:
        head = f"| {r['dtype']} | {r['shape']} | {r['m']} | {r['rows']} |"
        if "public" not in r:
            lines.append(f"{head} {r.get('status', '–')} |" + " |" * 14)
            continue
        chosen = r.get("chosen")
        public = us_of(r, "public")
        gbps = None if public is None else r["moved_bytes"] / public / 1e3
        lines.append(
            f"{head} {'none correct' if chosen is None else chosen['path'] + ' ' + cfg_text(chosen['config'])} "
            f"| {fmt(public)} | {fmt(ratio(public, us_of(r, 'F.linear')), 2)} | {fmt(us_of(r, 'F.linear'))} "
            f"| {fmt(best_us(r, 'fused'))} | {fmt(best_us(r, 'delta'))} | {fmt(us_of(r, 'unfused'))} "
            f"| {fmt(us_of(r, 'merge'))} | {fmt(us_of(r, 'PEFT eager'))} | {fmt(us_of(r, 'public eager'))} "
            f"| {fmt(us_of(r, 'F.linear eager'))} | {fmt(r['moved_bytes'] / 1e6, 2)} | {fmt(gbps, 0)} "
            f"| {fmt(None if gbps is None or not peak else 100 * gbps / peak, 0)} | {cfg_text(r.get('autotuned'))} |"
        )
    return lines


def correctness_section(report):
    checks = report["correctness"]
    groups = {}
    for c in checks:
        if c.get("ok") is not None:
            groups.setdefault((c["kind"], c["dtype"]), []).append(c)
    failed = [c for c in checks if c.get("ok") is False]
    lines = [
        f"### Correctness against the float64 reference: {sum(1 for c in checks if c.get('ok'))} ok, {len(failed)} "
        f"failed, {sum(1 for c in checks if c.get('ok') is None)} skipped",
        "",
        "| launch path | dtype | checks | ok | worst rel err | worst documents' term rel err |",
        "|---|---|---|---|---|---|",
    ]
    for (kind, dtype), rows in sorted(groups.items()):
        errs = [c.get("rel_err") for c in rows if isinstance(c.get("rel_err"), float)]
        lora = [c.get("lora_rel_err") for c in rows if isinstance(c.get("lora_rel_err"), float)]
        ok = sum(1 for c in rows if c["ok"])
        lines.append(md_row(kind, dtype, len(rows), ok, fmt(max(errs, default=None)), fmt(max(lora, default=None))))
    lines += [
        "",
        "| case | dtype | M | shape | entry | rel err | term rel err | empty rows rel err | ok |",
        "|" + "---|" * 9,
    ]
    for c in checks:
        status = "ok" if c.get("ok") else (c.get("note") or c.get("error") or "**FAIL**")
        errs = (fmt(c.get(key)) for key in ("rel_err", "lora_rel_err", "empty_rows_rel_err"))
        lines.append(md_row(c["case"], c["dtype"], c.get("m", "–"), c.get("shape", "–"), c["entry"], *errs, status))
    return lines


def candidates_section(report):
    lines = [
        "### Every candidate, graph µs (rel err when wrong, the error when it failed)",
        "",
        "| dtype | shape | M | rows | fused | delta (rule: *) |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["timing"]:
        if "candidates" not in r:
            continue
        cells = {"fused": [], "delta": []}
        for c in r["candidates"]:
            text = f"{cfg_text(c['config'])}{'*' if c['config'] == r.get('rule') else ''}: "
            text += c.get("error") or (fmt(c["us"]) if c["ok"] else f"WRONG (rel err {fmt(c['rel_err'])})")
            cells[c["path"]].append(text)
        lines.append(
            md_row(r["dtype"], r["shape"], r["m"], r["rows"], "; ".join(cells["fused"]), "; ".join(cells["delta"]))
        )
    return lines


def host_section(report):
    lines = ["### Host µs of one decode call, piece by piece (CPU time of un-synchronised calls)", ""]
    for r in report["host"]:
        lines += [
            f"{r['shape']}, M {r['m']}, {r['dtype']}, rows all; the table's path: {r['path']} {cfg_text(r['config'])}.",
            "",
            "| piece | host µs |",
            "|---|---|",
        ]
        lines += [
            f"| {what} | {fmt(us) if what not in r['errors'] else r['errors'][what]} |"
            for what, us in r["host_us"].items()
        ]
    return lines


def repo_path(path):
    """path relative to the repository when inside it (a GPU run's table: kernels/prag_kernels/…)."""
    path = Path(path)
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def markdown(report, decode):
    info = report["meta"]
    card = "CPU dry run (Triton interpreter)" if info["cpu_mode"] else f"{info['device']}, driver {info.get('driver')}"
    cuda = f", CUDA {info['cuda']}" if info.get("cuda") else ""
    keys = {}  # dtype -> [keys measured, keys planned]
    for r in report["timing"]:
        counts = keys.setdefault(r["dtype"], [0, 0])
        counts[0] += "public" in r
        counts[1] += 1
    measured = ", ".join(f"{dtype} {done} of {planned}" for dtype, (done, planned) in keys.items()) or "none"
    entries = sum(1 for r in report["timing"] if r.get("chosen"))
    lines = [
        f"# GPU report: {card}{cuda}, torch {info['torch']}, triton {info['triton']}, {info['started'][:10]}",
        "",
        f"`make bench-gpu` (bench/gpu/kernel_report.py, then decode_report.py), rank {RANK}, α {ALPHA:g}. Keys "
        f"measured: {measured} (the time budget cuts fp16 first). Dispatch table: {entries} entries written to "
        f"`{repo_path(info['table'])}`. Peak DRAM bandwidth {fmt(info.get('peak_dram_gbps'), 0)} GB/s (a 1 GiB "
        f"device copy); PEFT {info.get('peft') or 'not installed'}; {fmt(info.get('elapsed_s'))} s of a "
        f"{info['budget_s']:g} s budget.",
        "",
    ]
    lines += targets_section(report, decode) + [""] + chosen_section(report)
    lines += ["", "## Details", ""] + correctness_section(report) + [""] + candidates_section(report)
    lines += [""] + host_section(report)
    if report["errors"]:
        lines += ["", f"### Errors ({len(report['errors'])}, traces in the JSON)", ""]
        lines += [f"- {e['what']}: {e['error']}" for e in report["errors"][:40]]
    steps = "; ".join(f"{s['step']} {s['status']} ({s.get('seconds', 0)} s)" for s in report["steps"])
    return "\n".join(lines + ["", f"Steps: {steps}"]) + "\n"


def write_markdown():
    decode = json.loads(OPTIONS.decode.read_text()) if OPTIONS.decode and OPTIONS.decode.exists() else None
    text = markdown(clean(REPORT), decode)
    print(text)
    md = OPTIONS.md or (OPTIONS.out.with_suffix(".md") if OPTIONS.out else None)
    if md:
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(text)


# ---------------------------------------------------------------- main


def main():
    if OPTIONS.render:
        REPORT.update(json.loads(OPTIONS.out.read_text()))
        write_markdown()
        return 0
    if not CPU and not torch.cuda.is_available():
        sys.exit("kernel_report.py: no CUDA GPU here; run with --cpu for the dry run")
    REPORT["meta"] = meta()
    prepare_table()
    quick_autotune(OPTIONS.autotune_rep)
    log(f"start: {REPORT['meta']}")
    dump()
    if not CPU:
        step("peak DRAM bandwidth", measure_peak)
    for dtype in CHECK_DTYPES:  # correctness first: the table never names a path that failed in its dtype
        step(f"correctness {NAMES[dtype]}", run_correctness, dtype)
    models = list(dict.fromkeys(model for _, model, _, _ in SHAPES))
    for dtype in TIME_DTYPES:  # most decisive first; the budget cuts from the end
        for model in models:
            step(f"timing {NAMES[dtype]} {model}", run_timing, dtype, model)
            if dtype == TIME_DTYPES[0] and model == TARGET_MODEL:
                step("host µs of a decode call", run_host)
    dump()
    write_markdown()
    failed = [c for c in REPORT["correctness"] if c.get("ok") is False]
    log(f"done: {len(failed)} failed checks, {len(REPORT['errors'])} errors, {len(ENTRIES)} table entries")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Check, then time, the fused multi-document LoRA linear on a CUDA GPU; prints one markdown table.

    python bench/gpu/gpu_kernels.py          a CUDA GPU (H100/H200: a few minutes, most of it autotuning)
    python bench/gpu/gpu_kernels.py --quick  a CUDA GPU, the Llama-3-8B FFN shapes at decode (M 1, 16) and prefill
                                         (M 4096) only, autotuning included: well under 5 minutes on an H100/H200
    python bench/gpu/gpu_kernels.py --cpu    smoke mode: tiny shapes, torch path + Triton interpreter, few reps

1. Checks every dtype (GPU: fp32, fp16, bf16; --cpu: fp32, fp16) against the float64 reference,
   outputs poisoned with NaN, decode (M 1, 8) and prefill (M 37), with and without per-row documents;
   any failure exits 1 before timing.
2. Times, per FFN shape (Llama-3-8B 4096→14336 and 14336→4096, SmolLM2 576→1536 and 1536→576) and
   M ∈ {1, 8, 16, 64, 512, 4096}, with 3 documents × rank 2 (α = 16), the median per call of
       F.linear          the base projection alone
       fused             prag_kernels.fused_lora_linear (one Triton launch on CUDA)
       cat entry         prag_kernels.fused_lora_linear_cat on pre-stacked documents (the injection layer's call)
       unfused           F.linear + α·(x B_cat) A_catᵀ in torch (B_cat, A_cat stacked beforehand)
       merge             merge_lora_ + F.linear + restore_
   plus one heterogeneous batch: M = 32 rows, each with its own 3 of 8 loaded documents.
   GPU times are CUDA events around batches of back-to-back calls (launch overhead counts where
   it exceeds the kernel time, as in a decode loop); --cpu times are time.perf_counter.
   Next to the times (gpt-fast's habit): the bytes a fused call must move at least (W + x + the loaded
   pairs A, B + y, each once) and the bandwidth that makes at the fused time, also as a share of the
   card's peak DRAM bandwidth (memory clock × bus width × 2, from the driver), which is what bounds the
   decode rows: at M = 1 the call is W's bytes and little else.
Targets (issues 3 and 13): fused ≤ 1.05× F.linear at M ≤ 16 and ≥ 80 % of peak bandwidth at M = 1 for the
Llama shapes in bf16, ≤ 1.15× at M = 4096, below unfused at every M.
"""

import argparse
import os
import statistics
import sys
import time

ARGS = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ARGS.add_argument("--cpu", action="store_true", help="smoke mode on the CPU (tiny shapes, interpreter checks)")
ARGS.add_argument("--quick", action="store_true", help="GPU: the Llama-3-8B shapes at M 1, 16, 4096 only")
OPTIONS = ARGS.parse_args()
CPU = OPTIONS.cpu
if CPU:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from prag_kernels import (  # noqa: E402
    fused_lora_linear,
    fused_lora_linear_cat,
    fused_lora_linear_triton,
    merge_lora_,
    reference_fused_lora_linear,
    restore_,
)
from prag_kernels.torch_path import cat_rank, column_mask  # noqa: E402

ALPHA, RANK, DOCS = 16.0, 2, 3
HETERO_M, HETERO_LOADED = 32, 8
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
if CPU:
    DEVICE, DTYPES, TIME_DTYPE = "cpu", (torch.float32, torch.float16), torch.float32
    SHAPES = {"tiny 64→96": (64, 96), "tiny 96→64": (96, 64)}
    MS, HETERO_M, REPS = (1, 8), 8, 5
    CHECK_SHAPES = [(33, 47)]
else:
    DEVICE, DTYPES, TIME_DTYPE = "cuda", (torch.float32, torch.float16, torch.bfloat16), torch.bfloat16
    SHAPES = {
        "Llama-3-8B up 4096→14336": (4096, 14336),
        "Llama-3-8B down 14336→4096": (14336, 4096),
        "SmolLM2 up 576→1536": (576, 1536),
        "SmolLM2 down 1536→576": (1536, 576),
    }
    MS, REPS = (1, 8, 16, 64, 512, 4096), None  # REPS: CPU only; GPU samples are calibrated batches
    CHECK_SHAPES = [(33, 47), (576, 1536), (14336, 4096)]  # the last one takes the split-K decode path
    if OPTIONS.quick:
        SHAPES = {name: shape for name, shape in SHAPES.items() if name.startswith("Llama")}
        MS = (1, 16, 4096)


def operands(k, n, m, dtype, docs=DOCS, rows=False, seed=0):
    """x, W, bias=None, A, B (values ~ a trained adapter's scale) and, if rows, (m, 3) row_docs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g) / k**0.5
    a = torch.randn(docs, n, RANK, generator=g) * 0.02
    b = torch.randn(docs, k, RANK, generator=g) / k**0.5
    row_docs = torch.stack([torch.randperm(docs, generator=g)[:3] for _ in range(m)]) if rows else None
    if rows:
        row_docs[::5, 2] = -1  # some empty slots
    move = lambda t: t.to(DEVICE, dtype)  # noqa: E731
    return move(x), move(w), move(a), move(b), None if row_docs is None else row_docs.to(DEVICE)


def check():
    """Every dtype against the float64 reference; returns the number of failures."""
    failures = 0
    for dtype in DTYPES:
        for k, n in CHECK_SHAPES:
            for m, rows in [(1, False), (8, True), (37, False), (37, True)]:  # decode and prefill paths
                x, w, a, b, row_docs = operands(k, n, m, dtype, docs=HETERO_LOADED if rows else DOCS, rows=rows)
                ref = reference_fused_lora_linear(x.double(), w.double(), None, a.double(), b.double(), ALPHA, row_docs)
                out = torch.full((m, n), float("nan"), device=DEVICE, dtype=dtype)
                paths = {
                    "triton": fused_lora_linear_triton(x, w, None, a, b, ALPHA, row_docs, out=out),
                    "fused": fused_lora_linear(x, w, None, a, b, ALPHA, row_docs),
                }
                for path, y in paths.items():
                    err = ((y.double() - ref).norm() / ref.norm()).item()
                    ok = err < TOL[dtype]  # a NaN left in y fails here too
                    failures += not ok
                    print(
                        f"check {str(dtype)[6:]:8} {k}→{n} M={m:<3} {'row_docs' if rows else 'all docs':8} "
                        f"{path:6} rel err {err:.1e} {'ok' if ok else 'FAIL'}"
                    )
    return failures


def median_us(fn):
    """Median microseconds per call. CPU: perf_counter around each call. GPU: CUDA events around
    batches of back-to-back calls (about 20 ms each), so the launch queue stays full and launch
    overhead counts only where it exceeds the kernels' own time, as in a decode loop."""
    fn()
    if DEVICE == "cpu":
        samples = []
        for _ in range(REPS):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1e6)
        return statistics.median(samples)
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    calls = max(1, min(1000, int(0.02 / max(time.perf_counter() - start, 1e-6))))
    samples = []
    for _ in range(10):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        samples.append(begin.elapsed_time(end) * 1e3 / calls)
    return statistics.median(samples)


def moved_bytes(k, n, m, docs, dtype):
    """What one call must move at least: W (n, k), x (m, k), the pairs A (docs, n, r), B (docs, k, r), y (m, n)."""
    return (n * k + m * k + docs * RANK * (n + k) + m * n) * torch.empty(0, dtype=dtype).element_size()


def peak_gbps():
    """The card's peak DRAM bandwidth in GB/s (None on the CPU)."""
    if CPU:
        return None
    import triton.testing

    return triton.testing.get_dram_gbps()


def row(name, k, n, m, peak, hetero=False):
    loaded = HETERO_LOADED if hetero else DOCS
    x, w, a, b, row_docs = operands(k, n, m, TIME_DTYPE, docs=loaded, rows=hetero)
    a_cat, b_cat = cat_rank(a).T.contiguous().T, cat_rank(b)  # cached by a caller; a_cat.T contiguous
    mask = column_mask(row_docs, a.shape[0], RANK, x.dtype) if hetero else None

    def unfused():
        shrink = x @ b_cat
        return F.linear(x, w) + ALPHA * ((shrink if mask is None else shrink * mask) @ a_cat.T)

    def merged():
        backup = merge_lora_(w, a, b, ALPHA)
        y = F.linear(x, w)
        restore_(w, backup)
        return y

    with torch.inference_mode():
        t = {
            "linear": median_us(lambda: F.linear(x, w)),
            "fused": median_us(lambda: fused_lora_linear(x, w, None, a, b, ALPHA, row_docs)),
            "cat": median_us(lambda: fused_lora_linear_cat(x, w, None, a_cat, b_cat, ALPHA, mask)),
            "unfused": median_us(unfused),
            "merge": None if hetero else median_us(merged),
        }
    docs = f"3 of {HETERO_LOADED} per row" if hetero else f"{DOCS}"
    merge = "n/a (per-row)" if t["merge"] is None else f"{t['merge']:.1f}"
    moved = moved_bytes(k, n, m, loaded, TIME_DTYPE)
    gbps = moved / t["fused"] / 1e3
    share = "n/a" if peak is None else f"{100 * gbps / peak:.0f} %"
    return (
        f"| {name} | {m} | {docs} | {t['linear']:.1f} | {t['fused']:.1f} | {t['fused'] / t['linear']:.3g}× "
        f"| {moved / 1e6:.3g} | {gbps:.3g} | {share} | {t['cat']:.1f} | {t['unfused']:.1f} | {merge} |"
    )


def main():
    if DEVICE == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_kernels.py: no CUDA GPU here; run with --cpu for the smoke mode")
    failures = check()
    if failures:
        sys.exit(f"gpu_kernels.py: {failures} check(s) failed; not timing")
    card = "CPU (torch path; Triton checked in the interpreter)" if CPU else torch.cuda.get_device_name()
    peak = peak_gbps()
    print(
        f"\nfused LoRA linear on {card}: {str(TIME_DTYPE)[6:]}, rank {RANK}, α {ALPHA:g}, "
        f"median µs per call ({'perf_counter' if CPU else 'CUDA events'}); peak DRAM bandwidth "
        f"{'n/a' if peak is None else f'{peak:.0f} GB/s'}\n"
    )
    print(
        "| shape | M | docs | F.linear µs | fused µs | fused / F.linear | MB moved | fused GB/s | of peak "
        "| cat entry µs | unfused torch µs | merge+linear+restore µs |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, (k, n) in SHAPES.items():
        for m in MS:
            print(row(name, k, n, m, peak), flush=True)
    for name, (k, n) in SHAPES.items():
        print(row(name, k, n, HETERO_M, peak, hetero=True), flush=True)


if __name__ == "__main__":
    main()

"""The fused multi-document LoRA linear as one Triton kernel.

For a tile of rows m and output columns n, with the D documents stacked along rank
(column j of B_cat/A_cat is column j % r of document j // r, read in place from the
(D, in, r) / (D, out, r) tensors: nothing is concatenated or merged):

    acc[m, n]   = Σ_k x[m, k] W[n, k]              base GEMM, K-loop over `in`
    shrink[m, j] = Σ_k x[m, k] B_cat[k, j]          same K-loop, same x tile, j < R_PAD
    shrink[m, j] *= w[m, j]                          row selection (see below)
    y[m, n]     = acc + scale · Σ_j shrink[m, j] A_cat[n, j] + bias[n]   epilogue

fp32 accumulation throughout; R_PAD = max(16, next power of two ≥ R) because the
NVIDIA backend needs K ≥ 16 for a 16-bit tl.dot (padded columns load as zeros).
The row selection w:
    ROW_MODE 0  every row uses every column (w = 1)
    ROW_MODE 1  row_docs (G, J) ids: w[m, j] = #{k : row_docs[g, k] = j // r}, g = m // ROWS_PER_GROUP
    ROW_MODE 2  row_mask (G, R) weights: w[m, j] = row_mask[g, j]
so one launch serves a batch where every row has its own documents, and a row with
none gets exactly the base linear.

Block sizes are autotuned per M bucket: decode (M ≤ 16) uses BLOCK_M = 16 tiles
streaming W with deep pipelines, prefill uses 128-row tiles.
"""
import time

import torch
import triton
import triton.language as tl

MAX_RANK = 128  # total rank D·r the kernel takes; R_PAD beyond it would spill the shrink accumulator

_CONFIGS = [
    # decode: M ≤ 16, memory bound on W; narrow N tiles keep every SM streaming
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 256}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 256}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 128, "BLOCK_K": 128}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 512}, num_warps=4, num_stages=3),
    # middle: 16 < M ≤ 256
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 128}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64}, num_warps=4, num_stages=4),
    # prefill: M in the hundreds to thousands, compute bound
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 256, "BLOCK_K": 64}, num_warps=8, num_stages=3),
]


def m_bucket(m):
    """The autotune key for M: 16 for decode, else the next power of two up to 4096."""
    return min(max(16, triton.next_power_of_2(m)), 4096)


def _configs_for(configs, named_args, **kwargs):
    """Early prune: only the family of configs meant for this M (and a shrink tile that fits)."""
    bucket, r_pad = named_args["M_BUCKET"], kwargs.get("R_PAD", named_args.get("R_PAD"))
    want = (16,) if bucket <= 16 else (32, 64) if bucket <= 256 else (64, 128)
    kept = [c for c in configs if c.kwargs["BLOCK_M"] in want
            and c.kwargs["BLOCK_M"] * (c.kwargs["BLOCK_N"] + r_pad) <= 128 * (256 + 16)]
    return kept or [c for c in configs if c.kwargs["BLOCK_M"] in want][:1]


@triton.jit
def _fused_lora_kernel(
    x_ptr, w_ptr, bias_ptr, a_ptr, b_ptr, rows_ptr, y_ptr,
    M, N, K, R, RANK, J, ROWS_PER_GROUP, M_BUCKET, scale,
    stride_xm, stride_xk, stride_wn, stride_wk,
    stride_ad, stride_an, stride_ar, stride_bd, stride_bk, stride_br,
    stride_rg, stride_rj, stride_ym, stride_yn,
    HAS_BIAS: tl.constexpr, ROW_MODE: tl.constexpr, R_PAD: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr = 8,
):
    # grouped ordering of the output tiles (Triton matmul tutorial) so neighbours share W in L2
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
    offs_r = tl.arange(0, R_PAD)
    m_ok = offs_m < M
    n_ok = offs_n < N
    r_ok = offs_r < R
    rows64 = offs_m.to(tl.int64)
    # rank column j lives in document j // RANK, at its column j % RANK
    doc = offs_r // RANK
    b_col = doc * stride_bd + (offs_r % RANK) * stride_br
    a_col = doc * stride_ad + (offs_r % RANK) * stride_ar

    x_ptrs = x_ptr + rows64[:, None] * stride_xm + offs_k[None, :] * stride_xk  # (BLOCK_M, BLOCK_K)
    w_ptrs = w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk  # (BLOCK_K, BLOCK_N) of Wᵀ
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + b_col[None, :]  # (BLOCK_K, R_PAD) of B_cat

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    shrink = tl.zeros((BLOCK_M, R_PAD), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = offs_k < K - k0
        x = tl.load(x_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_ok[:, None] & r_ok[None, :], other=0.0)
        acc = tl.dot(x, w, acc, input_precision=PRECISION)
        shrink = tl.dot(x, b, shrink, input_precision=PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk
        b_ptrs += BLOCK_K * stride_bk

    group = offs_m // ROWS_PER_GROUP
    if ROW_MODE == 1:  # count how often the row lists each column's document
        count = tl.zeros((BLOCK_M, R_PAD), dtype=tl.float32)
        for slot in range(0, J):
            ids = tl.load(rows_ptr + group * stride_rg + slot * stride_rj, mask=m_ok, other=-1)
            count += tl.where(ids[:, None] == doc[None, :], 1.0, 0.0)
        shrink = shrink * count
    elif ROW_MODE == 2:
        weights = tl.load(rows_ptr + group[:, None] * stride_rg + offs_r[None, :] * stride_rj,
                          mask=m_ok[:, None] & r_ok[None, :], other=0.0)
        shrink = shrink * weights.to(tl.float32)

    a = tl.load(a_ptr + a_col[:, None] + offs_n[None, :] * stride_an,
                mask=r_ok[:, None] & n_ok[None, :], other=0.0)  # (R_PAD, BLOCK_N) of A_catᵀ
    acc += scale * tl.dot(shrink.to(a.dtype), a, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    y_ptrs = y_ptr + rows64[:, None] * stride_ym + offs_n[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def _interpreter_bench(kernel_call, quantiles):
    """The interpreter has no device timer: one timed call per config, so that the autotuned launch
    (pruning, key, grid) runs in CPU tests too; the choice itself means nothing there."""
    start = time.perf_counter()
    kernel_call()
    return [time.perf_counter() - start] * len(quantiles)


_fused_lora_autotuned = triton.autotune(
    configs=_CONFIGS, key=["M_BUCKET", "N", "K", "R_PAD", "ROW_MODE"],
    prune_configs_by={"early_config_prune": _configs_for},
    do_bench=_interpreter_bench if triton.knobs.runtime.interpret else None,
)(_fused_lora_kernel)


def lora_linear_triton(x, weight, bias, lora_a, lora_b, scale, row_docs=None, row_mask=None, out=None,
                       config=None):
    """y (M, out) for x (M, in) in one launch; arguments as prag_kernels.fused_lora_linear, already checked.

    row_docs (G, J) ids or row_mask (G, R) column weights (at most one), G dividing M. Any strides.
    out: an optional (M, out) tensor to write y into. config: a dict of BLOCK_M/BLOCK_N/BLOCK_K
    (and num_warps/num_stages) instead of autotuning (tests use small blocks to get many tiles)."""
    m, k = x.shape
    n = weight.shape[0]
    n_docs, _, rank = lora_b.shape
    total = n_docs * rank
    if total > MAX_RANK:
        raise ValueError(f"lora_b: total rank D·r = {total} exceeds the Triton kernel's {MAX_RANK}")
    if out is None:
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return out
    rows = row_docs if row_docs is not None else row_mask
    row_mode = 0 if rows is None else 1 if row_docs is not None else 2
    r_pad = max(16, triton.next_power_of_2(total))
    fp32_exact = x.dtype == torch.float32 and not (x.is_cuda and torch.backends.cuda.matmul.allow_tf32)
    args = (
        x, weight, x if bias is None else bias, lora_a, lora_b, x if rows is None else rows, out,
        m, n, k, total, max(rank, 1), 0 if rows is None else rows.shape[1],
        1 if rows is None else m // rows.shape[0], m_bucket(m), float(scale),
        *x.stride(), *weight.stride(), *lora_a.stride(), *lora_b.stride(),
        *((0, 0) if rows is None else rows.stride()), *out.stride(),
    )
    meta = dict(HAS_BIAS=bias is not None, ROW_MODE=row_mode, R_PAD=r_pad,
                PRECISION="ieee" if fp32_exact else "tf32")

    def grid(cfg):
        return (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)

    if config is None:
        _fused_lora_autotuned[grid](*args, **meta)
    else:
        _fused_lora_kernel[grid({**meta, **config})](*args, **meta, **config)
    return out

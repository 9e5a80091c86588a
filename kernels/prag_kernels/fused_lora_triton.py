"""The multi-document LoRA linear as Triton kernels, two paths: "fused" (a prefill GEMM and a decode path that
streams W, each with the LoRA term in its K-loop and epilogue) and "delta" (the vendor GEMM, then _delta_kernel).
prag_kernels.dispatch says which serves a call.

The D documents are stacked along rank (column j of B_cat/A_cat is column j % r of document
j // r, read in place from the (D, in, r) / (D, out, r) tensors: nothing is concatenated or
merged). For rows m and output columns n:

    acc[m, n]    = Σ_k x[m, k] W[n, k]              base GEMM, K-loop over `in`
    shrink[m, j] = Σ_k x[m, k] B_cat[k, j]          same K-loop, same x tile, j < R_PAD
    y[m, n]      = acc + scale · Σ_j shrink[m, j] w[g, j] A_cat[n, j] + bias[n]     epilogue

with g = m // ROWS_PER_GROUP and w the row selection: 1 everywhere (has_rows 0) or the
(G, R) row_mask weights (row_docs ids arrive as their column_mask counts). A row whose weights
are all 0 gets exactly the base linear (it adds scale · 0). fp32 accumulation throughout;
R_PAD = max(16, next power of two ≥ R) because the NVIDIA backend needs K ≥ 16 for a 16-bit
tl.dot (padded columns load as zeros).

Prefill (M > DECODE_M): _fused_lora_kernel, output tiles (BLOCK_M, BLOCK_N), autotuned per M bucket.

Decode (M ≤ DECODE_M, the tokens of a generate step): memory-bound on W, which it must stream
at HBM bandwidth. _decode_kernel computes the transposed product ("swap-AB"),

    accᵀ (BLOCK_N, 16) = W[n-tile, k-chunk] · x[:, k-chunk]ᵀ,  shrinkᵀ (R_PAD, 16) = B_catᵀ · xᵀ,

so W's rows fill the MMA's M side (≥ 64 for sm_90's wgmma, which reads W straight from shared
memory: no register tile of W, no spills) and the 16 padded rows of x sit on its narrow N side.
The grid is ⌈N / BLOCK_N⌉ output-column tiles × SPLIT K chunks. With SPLIT = 1 (enough column
tiles to fill the GPU, e.g. 4096→14336) each program runs the epilogue itself: one launch. With
SPLIT > 1 (few columns, long K, e.g. 14336→4096) each program writes fp32 partials of acc and
shrink (part (SPLIT, M, N + R_PAD)) and a second, tiny launch (_reduce_kernel) sums them and runs
the epilogue once: the LoRA expand is added once, not per split. Its traffic is
SPLIT·M·(N + R_PAD)·4 bytes written and read, < 0.2 % of W's bytes at M = 1.

Delta (any M): F.linear (cuBLAS) writes y = x Wᵀ + bias; _delta_kernel then adds scale · ((x B_cat) ⊙ w) A_catᵀ in
place, shrink and expand in one launch (its docstring). Beyond the GEMM it moves y twice (read, write) and the
documents' (K + N)·R elements: at M = 1 on a Llama-3-8B projection, bf16, three rank-2 documents, 57 KB and 221 KB
against W's 117 MB.

Host cost: launches() = plan() (everything that depends on shapes, flags, config and the table's answer, cached
per call signature in _plan) + bind() (the call's tensors and strides), so a decode call does little Python.
"""
import functools
import time

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import dispatch
from .torch_path import column_mask

MAX_RANK = 64  # total rank D·r the kernels take (R_PAD ≤ 64); beyond it the torch path
DECODE_M = 16  # rows up to which the decode path runs (one 16-wide MMA column block)
REDUCE_BLOCK_N = 64
# ints the kernels take as plain runtime values: the JIT would otherwise compile a variant per value 1 (and per
# multiple of 16), so every row count, rank, bias/row-selection flag shares one binary, the one the gate checks
RUNTIME = ("M", "R", "RANK", "ROWS_PER_GROUP", "has_bias", "has_rows", "stride_rg", "stride_rj")


def _config(block_n, block_k, warps, stages, r_pad_max, operand_bytes=2, block_m=None):
    """An autotune config for operands of operand_bytes (2: fp16/bf16, 4: fp32 and tf32) and R_PAD ≤ r_pad_max:
    the specialisations the compile gate (prag_kernels.compile_gate) found free of spills on sm_80 and sm_90."""
    kwargs = {"BLOCK_N": block_n, "BLOCK_K": block_k} if block_m is None else \
        {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k}
    config = triton.Config(kwargs, num_warps=warps, num_stages=stages)
    config.r_pad_max, config.operand_bytes = r_pad_max, operand_bytes
    return config


# Every config here passes the compile gate (tests/test_kernel_compile.py, table in
# bench/results/kernel-compile.md) for every specialisation the pruners may pick it for.
PREFILL_CONFIGS = [
    # 16-bit: BLOCK_M ≥ 64 (sm_90's wgmma takes 64 rows a warpgroup), BLOCK_K and BLOCK_N ≥ 16·num_warps (B's
    # BLOCK_K × R_PAD and A's R_PAD × BLOCK_N tiles give each thread 16 bytes to load at R_PAD 16)
    # middle: 16 < M ≤ 256
    _config(64, 64, 4, 3, 64, block_m=64),
    _config(64, 64, 4, 4, 64, block_m=64),
    _config(128, 64, 4, 4, 16, block_m=64),
    # prefill: M in the hundreds to thousands, compute bound (BLOCK_M 64 serves both families)
    _config(128, 128, 8, 2, 32, block_m=128),
    _config(64, 64, 4, 4, 16, block_m=128),
    # fp32 (ieee FMA or tf32): small tiles for every M, larger ones spill
    _config(32, 32, 4, 2, 64, operand_bytes=4, block_m=32),
    _config(32, 16, 4, 3, 64, operand_bytes=4, block_m=32),
]
DECODE_CONFIGS = [
    _config(64, 128, 4, 4, 64),
    _config(128, 64, 4, 4, 64),
    _config(128, 128, 4, 3, 32),
    _config(64, 64, 4, 3, 64),
    _config(32, 32, 4, 3, 64, operand_bytes=4),
    _config(64, 32, 4, 3, 32, operand_bytes=4),
]
# The delta path's configs (BLOCK_M 16: decode, one m-tile; 64: prefill); delta_config picks one by rule, the GPU
# report's dispatch table may name another of these (and only these: they are the ones the gate compiled).
DELTA_CONFIGS = [
    _config(64, 256, 4, 3, 64, block_m=16),
    _config(128, 128, 4, 3, 64, block_m=16),
    _config(128, 64, 4, 3, 64, block_m=64),
    _config(128, 128, 8, 3, 32, block_m=128),
    # fp32 (ieee FMA or tf32) at R_PAD 64: 8 warps and 32-wide tiles keep the shrink and expand tiles in registers
    _config(32, 32, 8, 3, 64, operand_bytes=4, block_m=16),
    _config(32, 32, 8, 3, 64, operand_bytes=4, block_m=32),
]


def cdiv(a, b):
    """⌈a / b⌉ for Python ints (triton.cdiv is a JIT function: ~2 µs a call from the host, several per launch)."""
    return -(-a // b)


def next_power_of_2(n):
    """The smallest power of two ≥ n (n ≥ 1), as triton.next_power_of_2, in plain Python."""
    return 1 << (n - 1).bit_length()


def m_bucket(m):
    """The prefill autotune key for M: the next power of two, from 32 up to 4096."""
    return min(max(32, next_power_of_2(m)), 4096)


def _fits(config, named_args, kwargs):
    """The config is gated for this R_PAD and operand size."""
    r_pad = kwargs.get("R_PAD", named_args.get("R_PAD"))
    return r_pad <= config.r_pad_max and config.operand_bytes == named_args["x_ptr"].element_size()


def _prefill_configs_for(configs, named_args, **kwargs):
    """Early prune: the configs gated for R_PAD and dtype; for 16-bit operands those meant for this M bucket."""
    want = (32, 64) if named_args["M_BUCKET"] <= 256 else (64, 128)
    return [c for c in configs
            if _fits(c, named_args, kwargs) and (c.operand_bytes == 4 or c.kwargs["BLOCK_M"] in want)]


def _decode_configs_for(configs, named_args, **kwargs):
    """Early prune: the configs gated for R_PAD and dtype, with BLOCK_K dividing the K chunk."""
    return [c for c in configs if _fits(c, named_args, kwargs) and named_args["K_SPLIT"] % c.kwargs["BLOCK_K"] == 0]


@triton.jit
def _lora_columns(R_PAD: tl.constexpr, RANK, stride_d, stride_r):
    """Offsets of the R_PAD stacked rank columns in a (D, n, r) tensor: column j is document j // RANK's j % RANK."""
    offs_r = tl.arange(0, R_PAD)
    return (offs_r // RANK) * stride_d + (offs_r % RANK) * stride_r


@triton.jit
def _k_loop(x_ptrs, w_ptrs, b_ptrs, m_ok, n_ok, r_ok, k_lo, k_hi, stride_xk, stride_wk, stride_bk, acc, shrink,
            SWAP_AB: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """The K-loop over columns [k_lo, k_hi) of `in`: acc += x Wᵀ, shrink += x B_cat, one x tile feeding both;
    SWAP_AB: the transposes, acc += W xᵀ and shrink += B_catᵀ xᵀ (pointer tiles laid out to match).
    Each operand has its own load line: the compile gate reads the width of every W, B and x load off them."""
    offs_k = tl.arange(0, BLOCK_K)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        k_ok = offs_k < k_hi - k0
        if SWAP_AB:  # xᵀ (K, rows), W (cols, K), B_catᵀ (R_PAD, K)
            x_mask, w_mask, b_mask = k_ok[:, None] & m_ok[None, :], n_ok[:, None] & k_ok[None, :], \
                r_ok[:, None] & k_ok[None, :]
        else:  # x (rows, K), Wᵀ (K, cols), B_cat (K, R_PAD)
            x_mask, w_mask, b_mask = m_ok[:, None] & k_ok[None, :], k_ok[:, None] & n_ok[None, :], \
                k_ok[:, None] & r_ok[None, :]
        x = tl.load(x_ptrs, mask=x_mask, other=0.0)
        w = tl.load(w_ptrs, mask=w_mask, other=0.0)
        b = tl.load(b_ptrs, mask=b_mask, other=0.0)
        if SWAP_AB:
            acc = tl.dot(w, x, acc, input_precision=PRECISION)
            shrink = tl.dot(b, x, shrink, input_precision=PRECISION)
        else:
            acc = tl.dot(x, w, acc, input_precision=PRECISION)
            shrink = tl.dot(x, b, shrink, input_precision=PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk
        b_ptrs += BLOCK_K * stride_bk
    return acc, shrink


@triton.jit
def _epilogue(acc, shrink, offs_m, offs_n, M, N, R, RANK, ROWS_PER_GROUP, scale, has_bias, has_rows,
              a_ptr, bias_ptr, rows_ptr, y_ptr, stride_ad, stride_an, stride_ar, stride_rg, stride_rj,
              stride_ym, stride_yn, R_PAD: tl.constexpr, PRECISION: tl.constexpr, INTO_Y: tl.constexpr):
    """acc (rows, cols) = x Wᵀ and shrink (rows, R_PAD) = x B_cat, fp32, for rows offs_m and columns offs_n:
    stores y = acc + scale · (shrink ⊙ w) A_catᵀ + bias in y's dtype; INTO_Y: acc is y's own tile (the delta
    path: y = y + scale · (shrink ⊙ w) A_catᵀ, in place)."""
    offs_r = tl.arange(0, R_PAD)
    m_ok, n_ok, r_ok = offs_m < M, offs_n < N, offs_r < R
    y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :] * stride_yn
    if INTO_Y:
        acc += tl.load(y_ptrs, mask=m_ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)
    if has_rows:
        group = offs_m // ROWS_PER_GROUP
        weights = tl.load(rows_ptr + group[:, None] * stride_rg + offs_r[None, :] * stride_rj,
                          mask=m_ok[:, None] & r_ok[None, :], other=0.0)
        shrink = shrink * weights.to(tl.float32)
    a_col = _lora_columns(R_PAD, RANK, stride_ad, stride_ar)
    a = tl.load(a_ptr + a_col[:, None] + offs_n[None, :] * stride_an,
                mask=r_ok[:, None] & n_ok[None, :], other=0.0)  # (R_PAD, cols) of A_catᵀ
    acc += scale * tl.dot(shrink.to(a.dtype), a, input_precision=PRECISION)
    if has_bias:
        acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit(do_not_specialize=RUNTIME)
def _fused_lora_kernel(
    x_ptr, w_ptr, bias_ptr, a_ptr, b_ptr, rows_ptr, y_ptr,
    M, N, K, R, RANK, ROWS_PER_GROUP, M_BUCKET, has_bias, has_rows, scale,
    stride_xm, stride_xk, stride_wn, stride_wk,
    stride_ad, stride_an, stride_ar, stride_bd, stride_bk, stride_br,
    stride_rg, stride_rj, stride_ym, stride_yn,
    R_PAD: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr = 8,
):
    """Prefill: one (BLOCK_M, BLOCK_N) tile of y per program, base GEMM and shrink in one K-loop."""
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
    m_ok, n_ok = offs_m < M, offs_n < N
    r_ok = tl.arange(0, R_PAD) < R
    x_ptrs = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm + offs_k[None, :] * stride_xk  # (BLOCK_M, BLOCK_K)
    w_ptrs = w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk  # (BLOCK_K, BLOCK_N) of Wᵀ
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + _lora_columns(R_PAD, RANK, stride_bd, stride_br)[None, :]

    acc, shrink = _k_loop(x_ptrs, w_ptrs, b_ptrs, m_ok, n_ok, r_ok, 0, K, stride_xk, stride_wk, stride_bk,
                          tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), tl.zeros((BLOCK_M, R_PAD), dtype=tl.float32),
                          False, BLOCK_K, PRECISION)
    _epilogue(acc, shrink, offs_m, offs_n, M, N, R, RANK, ROWS_PER_GROUP, scale, has_bias, has_rows,
              a_ptr, bias_ptr, rows_ptr, y_ptr, stride_ad, stride_an, stride_ar, stride_rg, stride_rj,
              stride_ym, stride_yn, R_PAD, PRECISION, False)


@triton.jit(do_not_specialize=RUNTIME + ("partial",))
def _decode_kernel(
    x_ptr, w_ptr, bias_ptr, a_ptr, b_ptr, rows_ptr, y_ptr, part_ptr,
    M, N, K, K_SPLIT, R, RANK, ROWS_PER_GROUP, has_bias, has_rows, partial, scale,
    stride_xm, stride_xk, stride_wn, stride_wk,
    stride_ad, stride_an, stride_ar, stride_bd, stride_bk, stride_br,
    stride_rg, stride_rj, stride_ym, stride_yn,
    R_PAD: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_M: tl.constexpr = 16,
):
    """Decode (M ≤ 16), swap-AB: program (n-tile, k-chunk) computes accᵀ = W xᵀ and shrinkᵀ = B_catᵀ xᵀ over
    its K_SPLIT columns of `in`; partial: stores both as fp32 partials, else runs the epilogue."""
    pid_n, pid_k = tl.program_id(0), tl.program_id(1)
    k_lo = pid_k * K_SPLIT
    k_hi = tl.minimum(K, k_lo + K_SPLIT)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    offs_r = tl.arange(0, R_PAD)
    m_ok, n_ok, r_ok = offs_m < M, offs_n < N, offs_r < R
    x_ptrs = x_ptr + offs_m[None, :] * stride_xm + (k_lo + offs_k)[:, None] * stride_xk  # (BLOCK_K, 16) of xᵀ
    w_ptrs = w_ptr + offs_n[:, None] * stride_wn + (k_lo + offs_k)[None, :] * stride_wk  # (BLOCK_N, BLOCK_K) of W
    b_ptrs = (b_ptr + _lora_columns(R_PAD, RANK, stride_bd, stride_br)[:, None]
              + (k_lo + offs_k)[None, :] * stride_bk)  # (R_PAD, BLOCK_K) of B_catᵀ

    acc, shrink = _k_loop(x_ptrs, w_ptrs, b_ptrs, m_ok, n_ok, r_ok, k_lo, k_hi, stride_xk, stride_wk, stride_bk,
                          tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32), tl.zeros((R_PAD, BLOCK_M), dtype=tl.float32),
                          True, BLOCK_K, PRECISION)
    if partial:  # part[pid_k, m, :N] = accᵀ, part[pid_k, m, N:] = shrinkᵀ (the first column tile writes it)
        row = part_ptr + (pid_k * M + offs_m).to(tl.int64)[None, :] * (N + R_PAD)
        tl.store(row + offs_n[:, None], acc, mask=n_ok[:, None] & m_ok[None, :])
        if pid_n == 0:
            tl.store(row + N + offs_r[:, None], shrink, mask=m_ok[None, :])
    else:
        _epilogue(tl.trans(acc), tl.trans(shrink), offs_m, offs_n, M, N, R, RANK, ROWS_PER_GROUP, scale, has_bias,
                  has_rows, a_ptr, bias_ptr, rows_ptr, y_ptr, stride_ad, stride_an, stride_ar, stride_rg,
                  stride_rj, stride_ym, stride_yn, R_PAD, PRECISION, False)


@triton.jit(do_not_specialize=RUNTIME + ("SPLIT",))
def _reduce_kernel(
    part_ptr, a_ptr, bias_ptr, rows_ptr, y_ptr,
    M, N, SPLIT, R, RANK, ROWS_PER_GROUP, has_bias, has_rows, scale,
    stride_ad, stride_an, stride_ar, stride_rg, stride_rj, stride_ym, stride_yn,
    R_PAD: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr = 16,
):
    """Split-K decode, second launch: acc = Σ_s part[s, :, n-tile], shrink = Σ_s part[s, :, N:], then the epilogue."""
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, R_PAD)
    m_ok = offs_m < M
    row = part_ptr + offs_m.to(tl.int64)[:, None] * (N + R_PAD)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    shrink = tl.zeros((BLOCK_M, R_PAD), dtype=tl.float32)
    for _ in range(0, SPLIT):
        acc += tl.load(row + offs_n[None, :], mask=m_ok[:, None] & (offs_n < N)[None, :], other=0.0)
        shrink += tl.load(row + N + offs_r[None, :], mask=m_ok[:, None], other=0.0)
        row += M * (N + R_PAD)
    _epilogue(acc, shrink, offs_m, offs_n, M, N, R, RANK, ROWS_PER_GROUP, scale, has_bias, has_rows,
              a_ptr, bias_ptr, rows_ptr, y_ptr, stride_ad, stride_an, stride_ar, stride_rg, stride_rj,
              stride_ym, stride_yn, R_PAD, PRECISION, False)


# N_CHUNK is specialised (always a multiple of BLOCK_N ≥ 16: one binary): its divisibility is what lets the expand
# load A and load/store y 16 bytes at a time (as a runtime value every column offset was unaligned)
@triton.jit(do_not_specialize=RUNTIME)
def _delta_kernel(
    x_ptr, a_ptr, b_ptr, rows_ptr, y_ptr,
    M, N, K, R, RANK, ROWS_PER_GROUP, N_CHUNK, has_rows, scale,
    stride_xm, stride_xk, stride_ad, stride_an, stride_ar, stride_bd, stride_bk, stride_br,
    stride_rg, stride_rj, stride_ym, stride_yn,
    R_PAD: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """The delta path's one launch, after the vendor GEMM wrote y = x Wᵀ + bias:

        y[m-tile, n-chunk] += scale · ((x B_cat) ⊙ w) A_catᵀ

    Program (m-tile, n-chunk) runs the shrink over all of K for its BLOCK_M rows (x and B_cat are K·(BLOCK_M + R)
    elements: the first program reads them from HBM, the others from L2), then the expand over its N_CHUNK
    columns, BLOCK_N at a time, each tile of y read, added to and written once. A is read once in all."""
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok, r_ok = offs_m < M, tl.arange(0, R_PAD) < R
    x_ptrs = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm + offs_k[None, :] * stride_xk  # (BLOCK_M, BLOCK_K)
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + _lora_columns(R_PAD, RANK, stride_bd, stride_br)[None, :]
    shrink = tl.zeros((BLOCK_M, R_PAD), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = offs_k < K - k0
        x = tl.load(x_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_ok[:, None] & r_ok[None, :], other=0.0)
        shrink = tl.dot(x, b, shrink, input_precision=PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        b_ptrs += BLOCK_K * stride_bk
    n_lo = pid_n * N_CHUNK
    for n0 in range(n_lo, tl.minimum(N, n_lo + N_CHUNK), BLOCK_N):
        _epilogue(tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), shrink, offs_m, n0 + tl.arange(0, BLOCK_N), M, N,
                  R, RANK, ROWS_PER_GROUP, scale, 0, has_rows, a_ptr, y_ptr, rows_ptr, y_ptr,
                  stride_ad, stride_an, stride_ar, stride_rg, stride_rj, stride_ym, stride_yn, R_PAD, PRECISION, True)


def _interpreter_bench(kernel_call, quantiles):
    """The interpreter has no device timer: one timed call per config, so that the autotuned launch
    (pruning, key, grid) runs in CPU tests too; the choice itself means nothing there."""
    start = time.perf_counter()
    kernel_call()
    return [time.perf_counter() - start] * len(quantiles)


def _interpreter_index_fix():
    """Backport of triton-lang/triton#9172 (issue #9171) to the interpreters of Triton ≤ 3.6.

    The interpreter holds a scalar as a 1-element 1-D numpy array and its tensor.__index__ is
    int(self.handle.data), which numpy ≥ 2.4 refuses ("only 0-dimensional arrays can be converted to
    Python scalars"). Our K-loops, range(k_lo, k_hi, BLOCK_K) with runtime bounds, call __index__. This
    wraps the interpreter's _patch_lang_tensor so that, after it patches tl.tensor for a kernel call,
    __index__ is upstream's fixed int(data.squeeze()), set through the same patch scope (restored with
    the rest when the call ends). Interpreter only: compiled kernels never see it."""
    from triton.runtime import interpreter
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "prag_index_fix", False):
        return

    def index(self):
        return int(self.handle.data.squeeze())

    def patch_lang_tensor(tensor, *args, **kwargs):
        original(tensor, *args, **kwargs)
        scope = args[0] if args else kwargs.get("scope")
        if hasattr(scope, "set_attr"):
            scope.set_attr(tensor, "__index__", index)
        else:  # interpreters without a patch scope set the attribute for good themselves
            tensor.__index__ = index

    patch_lang_tensor.prag_index_fix = True
    interpreter._patch_lang_tensor = patch_lang_tensor


if triton.knobs.runtime.interpret:
    _interpreter_index_fix()


def _autotune(kernel, configs, key, prune):
    return triton.autotune(configs=configs, key=key, prune_configs_by={"early_config_prune": prune},
                           do_bench=_interpreter_bench if triton.knobs.runtime.interpret else None)(kernel)


_fused_lora_autotuned = _autotune(_fused_lora_kernel, PREFILL_CONFIGS, ["M_BUCKET", "N", "K", "R_PAD"],
                                  _prefill_configs_for)
_decode_autotuned = _autotune(_decode_kernel, DECODE_CONFIGS, ["N", "K", "K_SPLIT", "R_PAD"], _decode_configs_for)


@functools.cache
def _sm_count(device):
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8


def split_k(n, k, sms, block_n=64, block_k=256):
    """(SPLIT, K_SPLIT) for a decode call: the fewest power-of-two K chunks, each a multiple of block_k and at
    least 1024 long, such that ⌈n / block_n⌉ column tiles × SPLIT chunks give every SM a program."""
    split, tiles = 1, cdiv(n, block_n)
    while tiles * split < sms and k >= 2 * split * 1024:
        split *= 2
    k_split = cdiv(cdiv(k, split), block_k) * block_k
    return cdiv(k, k_split), k_split


def lora_linear_triton(x, weight, bias, lora_a, lora_b, scale, row_docs=None, row_mask=None, out=None,
                       config=None, path=None):
    """y (M, out) for x (M, in); arguments as prag_kernels.fused_lora_linear, already checked.

    lora_a (D, out, r) and lora_b (D, in, r), or documents already stacked, (out, R) and (in, R): one document of
    rank R. row_docs (G, J) ids or row_mask (G, R) column weights (at most one), G dividing M. Any strides.
    path: "fused" (M ≤ DECODE_M the decode kernel, else the prefill kernel), "delta" (the vendor GEMM, then
    _delta_kernel), or None: the dispatch table's choice for this device and shape (prag_kernels.dispatch).
    out: an optional (M, out) tensor to write y into. config: fixed block sizes instead of the table's or the
    autotuner's (tests use small blocks to get many tiles): BLOCK_M/BLOCK_N/BLOCK_K, num_warps/num_stages, for
    the fused decode SPLIT_K (the number of K chunks), for the delta path N_SPLIT (the number of column chunks);
    keys a path does not use are ignored."""
    if row_docs is not None:
        row_mask = column_mask(row_docs, *documents(lora_b), torch.float32)
    path, steps = plan(x, weight, bias, lora_b, row_mask, config, path)
    if path == "delta":  # the vendor GEMM writes x Wᵀ + bias, the Triton launch adds the documents' term
        out = _vendor_gemm(x, weight, bias, out)
    elif out is None:
        out = torch.empty((x.shape[0], weight.shape[0]), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    for kernel, grid, args, meta in bind(path, steps, x, weight, bias, lora_a, lora_b, scale, row_mask, out):
        _launch(kernel, grid, args, meta)
    return out


def documents(lora):
    """(D, r) of a (D, n, r) tensor; (1, R) of a stacked (n, R) one."""
    return (lora.shape[0], lora.shape[2]) if lora.dim() == 3 else (1, lora.shape[1])


def _launch(kernel, grid, args, meta):
    """The one place a Triton launch happens (bench/gpu/host_cost.py stubs it and _vendor_gemm to time the rest)."""
    kernel[grid](*args, **meta)


def _vendor_gemm(x, weight, bias, out=None):
    """x Wᵀ + bias through torch (cuBLAS on CUDA), the delta path's base GEMM: F.linear's new tensor, or written
    into out (the raw launcher's out=). Returns it."""
    if out is None:
        return F.linear(x, weight, bias)
    if bias is None:
        return torch.mm(x, weight.T, out=out)
    return torch.addmm(bias, x, weight.T, out=out)


def delta_config(m, element_size):
    """The rule's config for the delta path: the first of DELTA_CONFIGS for this operand size and M family
    (BLOCK_M 16 for M ≤ DECODE_M, else the larger tiles)."""
    for config in DELTA_CONFIGS:
        if config.operand_bytes == element_size and (config.kwargs["BLOCK_M"] <= DECODE_M) == (m <= DECODE_M):
            return dict(config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)
    raise AssertionError(f"no delta config for M {m}, {element_size}-byte operands")


def n_split(m_tiles, n, block_n, sms):
    """(chunks, N_CHUNK) for the delta path: about two programs per SM over m-tiles × column chunks, each chunk a
    multiple of block_n (fewer programs re-read x and B_cat less; enough of them keep every SM busy)."""
    tiles = cdiv(n, block_n)
    chunks = max(1, min(tiles, cdiv(2 * sms, m_tiles)))
    n_chunk = cdiv(tiles, chunks) * block_n
    return cdiv(n, n_chunk), n_chunk


def launches(x, weight, bias, lora_a, lora_b, scale, row_mask, out, config=None, sms=None, path="fused"):
    """The Triton launches of `path` (None: the dispatch table's) for out = y, as (kernel or autotuner, grid, args,
    meta) in order; for the delta path out must already hold x Wᵀ + bias (the vendor GEMM's part). sms: the GPU's
    SM count (default: x's device's). The compile gate compiles them; lora_linear_triton runs them."""
    path, steps = plan(x, weight, bias, lora_b, row_mask, config, path, sms)
    return bind(path, steps, x, weight, bias, lora_a, lora_b, scale, row_mask, out)


def plan(x, weight, bias, lora_b, row_mask, config=None, path=None, sms=None):
    """(path, steps) for a call: the path (None: the dispatch table's, with its config unless config is given) and
    its launches' shape-only part (_plan, cached: per call only this signature is read, the op's host cost at
    decode, bench/gpu/host_cost.py)."""
    (m, k), (n_docs, rank) = x.shape, documents(lora_b)
    groups = 0 if row_mask is None else m // row_mask.shape[0]  # rows per row of row_mask; 0: no row selection
    fp32_exact = x.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32
    return _plan(path, x.device, x.dtype, m, weight.shape[0], k, n_docs * rank, rank, bias is not None, groups,
                 fp32_exact, tuple(config.items()) if config else (), sms)


def bind(path, steps, x, weight, bias, lora_a, lora_b, scale, row_mask, out):
    """plan's steps with this call's tensors and strides: [(kernel or autotuner, grid, args, meta)]."""
    # (stride_d, stride_n, stride_r); a stacked (n, R) operand is its only document
    a_strides = lora_a.stride() if lora_a.dim() == 3 else (0, *lora_a.stride())
    b_strides = lora_b.stride() if lora_b.dim() == 3 else (0, *lora_b.stride())
    rows, rows_stride = (x, (0, 0)) if row_mask is None else (row_mask, row_mask.stride())
    bias = x if bias is None else bias  # a placeholder pointer when has_bias is 0 (so is rows)
    scale = float(scale)
    if path == "delta":
        (kernel, grid, sizes, meta), = steps
        args = (x, lora_a, lora_b, rows, out, *sizes, scale, *x.stride(), *a_strides, *b_strides, *rows_stride,
                *out.stride())
        return [(kernel, grid, args, meta)]
    strides = (*x.stride(), *weight.stride(), *a_strides, *b_strides, *rows_stride, *out.stride())
    (kernel, grid, sizes, meta), *reduce = steps
    if x.shape[0] > DECODE_M:
        return [(kernel, grid, (x, weight, bias, lora_a, lora_b, rows, out, *sizes, scale, *strides), meta)]
    part = torch.empty(reduce[0][4], dtype=torch.float32, device=x.device) if reduce else out
    bound = [(kernel, grid, (x, weight, bias, lora_a, lora_b, rows, out, part, *sizes, scale, *strides), meta)]
    for kernel, grid, sizes, meta, _ in reduce:
        args = (part, lora_a, bias, rows, out, *sizes, scale, *a_strides, *rows_stride, *out.stride())
        bound.append((kernel, grid, args, meta))
    return bound


@functools.lru_cache(maxsize=4096)
def _plan(path, device, dtype, m, n, k, total, rank, has_bias, groups, fp32_exact, config, sms):
    """(path, [(kernel or autotuner, grid, int arguments, meta)]), the split-K reduce's step with the partials'
    shape appended. path None: the dispatch table's, and its config unless config (the fixed-config items) is
    given; () for the autotuner or the delta rule. Cleared when the table changes."""
    if total > MAX_RANK:
        raise ValueError(f"lora_b: total rank D·r = {total} exceeds the Triton kernel's {MAX_RANK}")
    if path is None:
        path, chosen = dispatch.choose_for(device, dtype, m, k, n, total, groups > 0)
        config = config or tuple((chosen or {}).items())
    sms, element_size = sms or _sm_count(device), dtype.itemsize
    meta = dict(R_PAD=dispatch.r_pad(total), PRECISION="ieee" if fp32_exact else "tf32")
    head = (m, n, k)
    ranks = (total, max(rank, 1), max(groups, 1))
    flags = (int(has_bias), int(groups > 0))  # has_bias, has_rows
    config = dict(config)
    if path == "delta":
        config = {key: config[key] for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages", "N_SPLIT")
                  if key in config} or delta_config(m, element_size)
        m_tiles = cdiv(m, config["BLOCK_M"])
        if "N_SPLIT" in config:
            n_chunk = cdiv(cdiv(n, config.pop("N_SPLIT")), config["BLOCK_N"]) * config["BLOCK_N"]
            chunks = cdiv(n, n_chunk)
        else:
            chunks, n_chunk = n_split(m_tiles, n, config["BLOCK_N"], sms)
        return path, [(_delta_kernel, (m_tiles, chunks), (*head, *ranks, n_chunk, flags[1]), dict(meta, **config))]
    config.pop("N_SPLIT", None)
    if m > DECODE_M:
        config.pop("SPLIT_K", None)
        sizes = (*head, *ranks, m_bucket(m), *flags)
        if config:
            grid = (cdiv(m, config["BLOCK_M"]) * cdiv(n, config["BLOCK_N"]),)
            return path, [(_fused_lora_kernel, grid, sizes, dict(meta, **config))]
        return path, [(_fused_lora_autotuned, lambda cfg: (cdiv(m, cfg["BLOCK_M"]) * cdiv(n, cfg["BLOCK_N"]),), sizes,
                       meta)]
    config.pop("BLOCK_M", None)
    if "SPLIT_K" in config:
        k_split = cdiv(cdiv(k, config.pop("SPLIT_K")), config["BLOCK_K"]) * config["BLOCK_K"]
        splits = cdiv(k, k_split)
    else:
        splits, k_split = split_k(n, k, sms)
    sizes = (*head, k_split, *ranks, *flags, int(splits > 1))
    if config:
        plan = [(_decode_kernel, (cdiv(n, config["BLOCK_N"]), splits), sizes, dict(meta, **config))]
    else:
        plan = [(_decode_autotuned, lambda cfg: (cdiv(n, cfg["BLOCK_N"]), splits), sizes, meta)]
    if splits > 1:
        plan.append((_reduce_kernel, (cdiv(n, REDUCE_BLOCK_N),), (m, n, splits, *ranks, *flags),
                     dict(meta, BLOCK_N=REDUCE_BLOCK_N, num_warps=4, num_stages=1), (splits, m, n + meta["R_PAD"])))
    return path, plan


dispatch.on_table_change(_plan.cache_clear)

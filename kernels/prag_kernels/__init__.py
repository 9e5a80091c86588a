"""prag_kernels: the fused multi-document LoRA linear, its reference, the merge baseline.

    fused_lora_linear(x, weight, bias, lora_a, lora_b, scale, row_docs=None)
        = x Wᵀ + bias + scale · Σ_j (x B_j) A_jᵀ        (docs/design.md, The fused op; see its docstring)

On CUDA Triton (fused_lora_triton.py), by one of two paths chosen per shape from the GPU report's table
(dispatch.py, dispatch_table.json; without an entry: "delta"):
    "fused"  base GEMM and LoRA shrink in one K-loop: one launch for prefill (M > 16) and for decode (M ≤ 16,
             swap-AB) when its output columns fill the GPU, else a split-K launch plus a tiny reduction launch;
    "delta"  the vendor GEMM (cuBLAS) writes x Wᵀ + bias, then one Triton launch adds the documents' term.
Three GEMMs in plain torch elsewhere (torch_path.py). The op is the torch.library custom op
prag::fused_lora_linear (fake impl for torch.compile, autograd from autograd.py); reference.py is the
specification. compile_gate.py compiles every Triton launch for sm_80/sm_90 on a CPU and checks that
none spills, all fit shared memory, W/B/A are loaded 16 bytes at a time, K-loops are pipelined (cp.async) and
the sm_90 prefill uses wgmma (`python -m prag_kernels.compile_gate`).

Fast entry for callers that cache the stacked documents (the injection layer):

    fused_lora_linear_cat(x, weight, bias, a_cat, b_cat, scale, row_mask=None)
        a_cat (out, R) = [A_1 … A_k], b_cat (in, R) = [B_1 … B_k], row_mask (M or B, R) or None
        = x Wᵀ + bias + scale · ((x b_cat) ⊙ row_mask) a_catᵀ

It skips the per-call (D, n, r) -> (n, D·r) copies and the row_docs range check (a host
sync on CUDA), and on the CPU its checks run only when a GEMM refuses the operands. Build
the operands once per document set: a_cat = torch.cat([A_1.T, …]).T and b_cat = torch.cat([B_1.T, …]).T
(a_cat.T and b_cat.T contiguous: the expand reads A in place, and the Triton K-loop reads B along `in` in
vector copies it can pipeline; a row-major b_cat is a strided gather per step), and for
per-row sets row_mask = column_mask(row_docs (B, J), D, r, x.dtype), one row per batch
element, which serves x (B, T, in) for any T.

Merge baseline: merge_lora_(weight, lora_a, lora_b, scale) -> backup, then
restore_(weight, backup) puts the original weight back bit-exactly.

For tests and benchmarks, the raw Triton launcher fused_lora_linear_triton(x (M, in), ...,
out=None, config=None, path=None) (None without Triton): arguments already valid, out= a tensor to
write y into, config= fixed block sizes instead of the table's or the autotuner's, path= "fused" or "delta"
instead of the table's.
"""

from .fused_lora import fused_lora_linear, fused_lora_linear_cat
from .fused_lora import lora_linear_triton as fused_lora_linear_triton
from .merge import merge_lora_, restore_
from .reference import reference_fused_lora_linear
from .torch_path import column_mask

__all__ = [
    "fused_lora_linear",
    "fused_lora_linear_cat",
    "column_mask",
    "reference_fused_lora_linear",
    "merge_lora_",
    "restore_",
    "fused_lora_linear_triton",
]

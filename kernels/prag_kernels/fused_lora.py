"""The public op: check the arguments, pick a path (Triton on CUDA, torch elsewhere), add autograd when needed.

Backends: "torch" (three GEMMs, torch_path.py), "triton" (on CUDA the default: the dispatch table's choice per
shape, prag_kernels.dispatch), or one Triton path by name: "fused" (base GEMM and shrink in one K-loop) or "delta"
(the vendor GEMM, then one Triton launch adding the documents' term).

The computation is registered as the custom op prag::fused_lora_linear (torch.library), with a fake
implementation (shapes only) and autograd (autograd.py), so torch.compile(fn, fullgraph=True) traces
through it as one graph node, forward and backward (the injection layer wraps its own lookup of the active
documents in a second op, prag::injected_linear, see prag_core.model.inject). Eager calls without autograd skip
the op's dispatcher (microseconds per call, per projection, per generated token) and run the path directly.
"""

import functools

import torch
import torch.nn.functional as F

from . import autograd
from .checks import check_cat, check_operands, check_row_docs, check_row_mask
from .torch_path import lora_linear_cat, lora_linear_torch

try:
    from .fused_lora_triton import MAX_RANK, lora_linear_triton
except ImportError:  # no Triton on this machine: the torch path everywhere
    MAX_RANK, lora_linear_triton = 0, None


def fused_lora_linear(x, weight, bias, lora_a, lora_b, scale, row_docs=None, *, backend=None):
    """y = x Wᵀ + bias + scale · Σ_{d ∈ S(m)} (x[m] B_d) A_dᵀ, weights untouched.

    x         (..., in)   floating; leading dims are flattened to M rows and restored on y
    weight    (out, in)   bias (out,) or None; x's dtype and device (so are lora_a, lora_b)
    lora_a    (D, out, r) the D documents' A;  lora_b (D, in, r) their B
    scale     float       α
    row_docs  None: every row uses all D documents (S(m) = all);
              int (M, J): row m uses the documents row_docs[m, :], -1 = empty slot, a document
              listed twice counts twice; for x (B, T, in) also (B, J): one set per batch element
    backend   None (Triton for CUDA tensors when importable, else torch), "torch", "triton" (the dispatch
              table's path) or a Triton path by name, "fused" or "delta"
    returns   (..., out) in x's dtype, fp32 accumulation.

    Zero documents is exactly F.linear(x, weight, bias). Differentiable w.r.t. x, lora_a,
    lora_b (and weight, bias if they require grad)."""
    check_operands(x, weight, bias, lora_a, lora_b)
    if row_docs is not None:
        check_row_docs(x, row_docs, lora_a.shape[0])
    return _run(x, weight, bias, lora_a, lora_b, scale, row_docs, None, backend, lora_a.shape[0] * lora_a.shape[2])


def fused_lora_linear_cat(x, weight, bias, a_cat, b_cat, scale, row_mask=None, *, backend=None):
    """The same op on documents already stacked along rank: the fast entry for a caller that caches them.

    a_cat (out, R) = [A_1 … A_k], b_cat (in, R) = [B_1 … B_k] (any strides; fastest when
    a_cat.T and b_cat.T are contiguous), row_mask None (every row uses every column) or (M, R) / (B, R) in x's
    dtype: how many times a row (or batch element) uses rank column j, e.g. 1 for its documents'
    columns and 0 elsewhere. No host sync, no copy of the adapters: on the CPU without autograd it
    is F.linear, the shrink GEMM, a multiply (with row_mask) and an addmm_."""
    if row_mask is not None:
        check_row_mask(x, row_mask, a_cat.shape[-1])
    if backend is None and not x.is_cuda and not _wants_grad(x, weight, bias, a_cat, b_cat):
        # the hot path (CPU generate): the GEMMs check shapes, dtypes and devices themselves, and
        # check_cat runs only when they refuse, to name the bad argument
        try:
            if a_cat.shape[1] == 0:
                return F.linear(x, weight, bias)  # exactly nn.Linear
            return lora_linear_cat(x, weight, bias, a_cat, b_cat, scale, row_mask)
        except (RuntimeError, IndexError):
            check_cat(x, weight, bias, a_cat, b_cat)
            raise
    check_cat(x, weight, bias, a_cat, b_cat)
    return _run(x, weight, bias, a_cat, b_cat, scale, None, row_mask, backend, a_cat.shape[1])


def _wants_grad(x, weight, bias, lora_a, lora_b):
    return torch.is_grad_enabled() and (
        x.requires_grad
        or weight.requires_grad
        or lora_a.requires_grad
        or lora_b.requires_grad
        or (bias is not None and bias.requires_grad)
    )


def _define_op():
    @torch.library.custom_op("prag::fused_lora_linear", mutates_args=())
    def op(
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scale: float,
        row_docs: torch.Tensor | None,
        row_mask: torch.Tensor | None,
        backend: str,
    ) -> torch.Tensor:
        """y (M, out) for x (M, in), checked arguments, at least one rank column; backend "torch" or "triton"."""
        return _PATHS[backend](x, weight, bias, lora_a, lora_b, scale, row_docs, row_mask)

    @op.register_fake
    def _(x, weight, bias, lora_a, lora_b, scale, row_docs, row_mask, backend):
        return x.new_empty((x.shape[0], weight.shape[0]))

    op.register_autograd(autograd.backward, setup_context=autograd.setup_context)
    return op


_op = _define_op()
_PATHS = {"torch": lora_linear_torch}
if lora_linear_triton is not None:
    _PATHS.update(
        triton=lora_linear_triton,
        fused=functools.partial(lora_linear_triton, path="fused"),
        delta=functools.partial(lora_linear_triton, path="delta"),
    )


def _run(x, weight, bias, lora_a, lora_b, scale, row_docs, row_mask, backend, total):
    """y for checked arguments with `total` stacked rank columns; lora_a, lora_b (D, n, r), or stacked (n, R) from
    the cat entry: one document of rank R, passed as it is to an eager Triton launch (no per-call views at decode),
    unsqueezed for the rest. Leading dims of x are flattened to rows and restored on y."""
    backend = _pick(x, total, backend)
    if total == 0:
        return F.linear(x, weight, bias)  # exactly nn.Linear
    grad = torch.compiler.is_compiling() or _wants_grad(x, weight, bias, lora_a, lora_b)
    if lora_a.dim() == 2 and (grad or backend == "torch"):
        lora_a, lora_b = lora_a.unsqueeze(0), lora_b.unsqueeze(0)
    flat = x.dim() == 2
    args = (x if flat else x.reshape(-1, x.shape[-1]), weight, bias, lora_a, lora_b, float(scale), row_docs, row_mask)
    y = _op(*args, backend) if grad else _PATHS[backend](*args)
    return y if flat else y.view(*x.shape[:-1], y.shape[-1])


def _pick(x, total, backend):
    """The path's name for total stacked rank columns: "triton" for CUDA tensors when importable (and the rank
    fits), else "torch"."""
    if backend is None:
        return "triton" if x.is_cuda and lora_linear_triton is not None and total <= MAX_RANK else "torch"
    if backend in _PATHS:
        return backend
    raise ValueError(
        f"backend: expected None, 'torch' or, with Triton installed, 'triton', 'fused' or 'delta'; got {backend!r}"
    )

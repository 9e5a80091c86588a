"""Training through the fused op: the backward registered for the prag::fused_lora_linear custom op.

With s = x B_cat, w the (M, R) row weights (see torch_path) and g = ∂L/∂y:

    y       = x Wᵀ + bias + scale · (s ⊙ w) A_catᵀ
    u       = (g A_cat) ⊙ w                         (M, R)
    ∂L/∂x   = g W + scale · u B_catᵀ
    ∂L/∂A   = scale · gᵀ (s ⊙ w)                    (out, R), split back to (D, out, r)
    ∂L/∂B   = scale · xᵀ u                          (in, R),  split back to (D, in, r)
    ∂L/∂W   = gᵀ x,  ∂L/∂bias = Σ_m g[m]            (only when asked for)

w is zero where a row does not use a document, so a row's loss reaches only its own
documents' pairs. The backward is plain torch (a few small GEMMs); s is recomputed
rather than stored.
"""

import torch

from .torch_path import apply_rows, cat_rank, row_weights, split_rank


def setup_context(ctx, inputs, output):
    """Saves what backward needs; inputs are the op's (x, weight, bias, lora_a, lora_b, scale, row_docs,
    row_mask, backend)."""
    x, weight, bias, lora_a, lora_b, scale, row_docs, row_mask, _ = inputs
    ctx.save_for_backward(x, weight, lora_a, lora_b, row_docs, row_mask)
    ctx.scale, ctx.has_bias = scale, bias is not None


def backward(ctx, g):
    x, weight, lora_a, lora_b, row_docs, row_mask = ctx.saved_tensors
    need_x, need_w, need_bias, need_a, need_b = ctx.needs_input_grad[:5]
    n_docs, scale = lora_a.shape[0], ctx.scale
    a_cat, b_cat = cat_rank(lora_a), cat_rank(lora_b)
    weights = row_weights(row_docs, row_mask, lora_a, x.dtype)
    u = apply_rows(g @ a_cat, weights)
    grad_x = torch.addmm(g @ weight, u, b_cat.T, alpha=scale) if need_x else None
    grad_w = g.T @ x if need_w else None
    grad_bias = g.sum(0) if need_bias and ctx.has_bias else None
    grad_a = split_rank(scale * (g.T @ apply_rows(x @ b_cat, weights)), n_docs) if need_a else None
    grad_b = split_rank(scale * (x.T @ u), n_docs) if need_b else None
    return grad_x, grad_w, grad_bias, grad_a, grad_b, None, None, None, None

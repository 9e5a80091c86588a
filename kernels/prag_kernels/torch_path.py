"""The fused LoRA linear in plain torch: the CPU path (and any device without Triton).

Stacking the D documents along rank turns the sum into one low-rank product:

    A_cat = [A_1 … A_D] (out, R),  B_cat = [B_1 … B_D] (in, R),  R = D·r
    y = x Wᵀ + bias + scale · (s ⊙ w) A_catᵀ,   s = x B_cat (M, R)

where w (M, R) says how many times row m uses rank column j: all ones without
row_docs, else w[m, j] = #{slots k : row_docs[m, k] = j // r} (a document listed
twice counts twice; -1 matches nothing). Three GEMMs and no Python loop over
rows or documents: the base F.linear, the shrink x·B_cat and an addmm_ for the expand.
A row that uses no document gets exactly F.linear's values (it adds zeros).
"""

import torch
import torch.nn.functional as F


def cat_rank(t):
    """(D, n, r) -> (n, D·r): the documents side by side along rank, stored rank-major (its
    transpose is contiguous, which the CPU GEMMs read fastest); a copy unless r == 1."""
    return t.transpose(1, 2).reshape(-1, t.shape[1]).T


def split_rank(t, n_docs):
    """(n, D·r) -> (D, n, r): the inverse of cat_rank, as a view."""
    return t.view(t.shape[0], n_docs, -1).transpose(0, 1)


def column_mask(row_docs, n_docs, rank, dtype, slot_weights=None):
    """(G, J) document ids -> (G, D·rank) column weights: w[g, j] = Σ_k v[g, k]·[row_docs[g, k] = j // rank],
    v = slot_weights (G, J) or 1, i.e. counts: a document listed twice counts twice; -1 matches nothing."""
    hits = row_docs.unsqueeze(-1) == torch.arange(n_docs * rank, device=row_docs.device) // rank
    if slot_weights is None:
        return hits.sum(1, dtype=dtype)
    return (hits * slot_weights.to(row_docs.device).unsqueeze(-1)).sum(1).to(dtype)


def row_weights(row_docs, row_mask, lora_a, dtype):
    """The (G, R) column weights of either row selection, or None when every row uses everything."""
    if row_docs is not None:
        return column_mask(row_docs, lora_a.shape[0], lora_a.shape[2], dtype)
    return row_mask


def apply_rows(t, weights):
    """t (M, R) ⊙ weights (G, R), each weight row serving M/G consecutive rows of t; in place."""
    if weights is None:
        return t
    if weights.shape[0] == t.shape[0]:
        return t.mul_(weights)
    t.view(weights.shape[0], -1, t.shape[1]).mul_(weights.unsqueeze(1))
    return t


def lora_linear_cat(x, weight, bias, a_cat, b_cat, scale, weights=None):
    """y (..., out) for x (..., in), documents stacked along rank: a_cat (out, R), b_cat (in, R),
    weights (G, R) or None. Fastest when a_cat.T is contiguous (the addmm_ then reads it in place)."""
    y = F.linear(x, weight, bias)
    shrink = apply_rows(x.reshape(-1, x.shape[-1]) @ b_cat, weights)
    y.view(-1, y.shape[-1]).addmm_(shrink, a_cat.T, alpha=scale)  # view: F.linear's output is contiguous
    return y


def lora_linear_torch(x, weight, bias, lora_a, lora_b, scale, row_docs=None, row_mask=None):
    """y (M, out) for x (M, in); arguments as prag_kernels.fused_lora_linear, already checked.

    row_docs (G, J) ids or row_mask (G, R) column weights (at most one), G dividing M."""
    weights = row_weights(row_docs, row_mask, lora_a, x.dtype)
    return lora_linear_cat(x, weight, bias, cat_rank(lora_a), cat_rank(lora_b), scale, weights)

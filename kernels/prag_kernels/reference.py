"""The specification of the fused multi-document LoRA linear, in plain torch.

For an nn.Linear with weight W (out, in), bias b (out,), input x (M, in) and the
D loaded documents' pairs A_d (out, r), B_d (in, r):

    y[m] = x[m] Wᵀ + b + scale · Σ_{d ∈ S(m)} (x[m] B_d) A_dᵀ

where S(m) is every document (row_docs=None) or the documents listed in
row_docs[m, :] (-1 marks an empty slot). Every other implementation is tested
against this one, run in float64.
"""

import torch


def reference_fused_lora_linear(x, weight, bias, lora_a, lora_b, scale, row_docs=None):
    """Slow and obvious: one document at a time, one row at a time when rows differ."""
    y = x @ weight.T
    if bias is not None:
        y = y + bias
    n_docs = lora_a.shape[0]
    if row_docs is None:
        for d in range(n_docs):
            y = y + scale * (x @ lora_b[d]) @ lora_a[d].T
        return y
    rows = []
    for m in range(x.shape[0]):
        row = y[m]
        for d in row_docs[m].tolist():
            if d >= 0:
                row = row + scale * (x[m] @ lora_b[d]) @ lora_a[d].T
        rows.append(row)
    return torch.stack(rows) if rows else y

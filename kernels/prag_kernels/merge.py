"""The merge baseline used by PRAG-style systems: fold the documents into W, then put W back.

    merge_lora_:  W ← W + scale · A_cat B_catᵀ  (= W + scale · Σ_d A_d B_dᵀ), in place
    restore_:     W ← backup, bit-exactly

The backup is a clone of the original W taken before merging: subtracting the delta
again is not exact in low precision (W + Δ − Δ ≠ W in bf16/fp16).
"""

import torch

from .checks import check_lora
from .torch_path import cat_rank


def merge_lora_(weight, lora_a, lora_b, scale):
    """Merge in place (one addmm_: the product accumulates in fp32, W is rounded once); returns the backup.

    weight (out, in), lora_a (D, out, r), lora_b (D, in, r), scale float; weight may be any view
    (e.g. the transpose of a GPT-2 Conv1D weight)."""
    check_lora(weight, lora_a, lora_b)
    backup = weight.detach().clone()
    if lora_a.shape[0] * lora_a.shape[2]:  # nothing to add otherwise (and -0.0 + 0 would flip a sign bit)
        with torch.no_grad():
            weight.addmm_(cat_rank(lora_a), cat_rank(lora_b).T, alpha=scale)
    return backup


def restore_(weight, backup):
    """Copy the backup from merge_lora_ back into weight: the original values, bit for bit."""
    if backup.shape != weight.shape or backup.dtype != weight.dtype:
        raise ValueError(
            f"backup: {tuple(backup.shape)} {backup.dtype} does not match weight {tuple(weight.shape)} {weight.dtype}"
        )
    with torch.no_grad():
        weight.copy_(backup)

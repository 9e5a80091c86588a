"""prag_kernels: the fused multi-document LoRA linear and its reference.

    fused_lora_linear(x, weight, bias, lora_a, lora_b, scale, row_docs=None)
        = x Wᵀ + bias + scale · Σ_j (x B_j) A_jᵀ
"""
from .reference import reference_fused_lora_linear
from .fused_lora import fused_lora_linear

__all__ = ["fused_lora_linear", "reference_fused_lora_linear"]

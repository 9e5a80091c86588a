"""Write documents as a standard PEFT LoRA adapter folder, without importing PEFT.

PEFT's LoRA adds scaling · lora_B.weight @ lora_A.weight to a weight W (out, in), with
scaling = lora_alpha / r (fan_in_fan_out=True transposes the product for GPT-2's Conv1D,
whose weight is stored (in, out); the LoRA tensors keep the same shapes). Our documents add
α · Σ_j A_j B_jᵀ = α · A_cat B_catᵀ (stacked along rank), so one adapter of rank r = Σ_j r_j with

    lora_B.weight = A_cat (out, r),   lora_A.weight = B_catᵀ (r, in),   lora_alpha = α · r

reproduces them exactly: scaling · lora_B @ lora_A = α · A_cat B_catᵀ.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes

from prag_core.files import write_bytes_atomic, write_text_atomic
from prag_core.pairs.doc_params import FINGERPRINT_FIELDS

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
# PEFT matches target_modules by module-name suffix; GPT-2's attention also has a c_proj
TARGET_PREFIX = {"gpt2": "mlp."}


def _check(docs):
    """The documents' shared model fingerprint, after checking they can form one adapter."""
    if not docs:
        raise ValueError("export_peft needs at least one document")
    fingerprint = docs[0].meta.get("fingerprint")
    if not isinstance(fingerprint, dict):
        raise ValueError("document 0 has no model fingerprint in its meta")
    for i, d in enumerate(docs):
        fp = d.meta.get("fingerprint") or {}
        if any(fp.get(k) != fingerprint.get(k) for k in FINGERPRINT_FIELDS):
            raise ValueError(f"document {i} was trained for another model than document 0")
        if set(d.pairs) != set(docs[0].pairs):
            raise ValueError(f"document {i} targets other modules than document 0")
        if d.alpha != docs[0].alpha:
            raise ValueError(
                f"document {i} has alpha {d.alpha}, document 0 has {docs[0].alpha}; one adapter has one scaling"
            )
    return fingerprint


def export_peft(doc_params_list, out_dir, base_model_name_or_path=None):
    """Write one PEFT adapter (adapter_config.json + adapter_model.safetensors) to `out_dir` holding the
    documents concatenated along rank; returns the folder. base_model_name_or_path defaults to the
    name the documents' model was loaded from."""
    docs = list(doc_params_list)
    fingerprint = _check(docs)
    model_type = fingerprint["model_type"]
    paths = list(docs[0].pairs)
    rank = sum(d.rank for d in docs)
    tensors = {}
    for path in paths:
        lora_a = torch.cat([d.pairs[path][0].detach() for d in docs], dim=1)  # A_cat (out, r)
        lora_b = torch.cat([d.pairs[path][1].detach() for d in docs], dim=1)  # B_cat (in, r)
        tensors[f"base_model.model.{path}.lora_A.weight"] = lora_b.T.contiguous().cpu()
        tensors[f"base_model.model.{path}.lora_B.weight"] = lora_a.contiguous().cpu()
    lora_alpha = docs[0].alpha * rank
    prefix = TARGET_PREFIX.get(model_type, "")
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path or fingerprint.get("name_or_path") or None,
        "r": rank,
        "lora_alpha": int(lora_alpha) if float(lora_alpha).is_integer() else lora_alpha,
        "target_modules": sorted({prefix + p.rsplit(".", 1)[1] for p in paths}),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": model_type == "gpt2",  # Conv1D weights are (in, out)
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": None,
    }
    out = Path(out_dir)
    write_bytes_atomic(out / WEIGHTS_NAME, safetensors_bytes(tensors, metadata={"format": "pt"}))
    write_text_atomic(out / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    return out

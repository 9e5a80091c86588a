"""export_peft: PEFT's adapter folder layout, and that PEFT's arithmetic reproduces our merge."""

import json

import pytest
from safetensors import safe_open
from tiny import random_doc_params, tiny_model

from prag_core.model.inject import ffn_module_paths, merged_documents, weight_out_in
from prag_core.pairs.peft_export import export_peft


def read_adapter(folder):
    config = json.loads((folder / "adapter_config.json").read_text())
    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as f:
        return config, {k: f.get_tensor(k) for k in f.keys()}


def peft_targets(model, target_modules):
    """Module names PEFT would wrap: a target matches a name equal to it or ending in '.' + target."""
    return [
        name for name, _ in model.named_modules() if any(name == t or name.endswith("." + t) for t in target_modules)
    ]


@pytest.mark.parametrize("model_type", ["llama", "phi3", "gpt2"])
@pytest.mark.parametrize("n_docs", [1, 3])
def test_layout_and_arithmetic(tmp_path, model_type, n_docs):
    model = tiny_model(model_type)
    docs = random_doc_params(model, n_docs, seed=2, alpha=16.0)
    folder = export_peft(docs, tmp_path / "adapter", base_model_name_or_path="some/model")
    config, tensors = read_adapter(folder)
    r = 2 * n_docs
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM" and config["bias"] == "none"
    assert config["r"] == r and config["lora_alpha"] / config["r"] == 16.0
    assert config["base_model_name_or_path"] == "some/model"
    assert config["fan_in_fan_out"] == (model_type == "gpt2")
    paths = ffn_module_paths(model)
    assert peft_targets(model, config["target_modules"]) == paths  # GPT-2: attention's c_proj is not matched
    assert set(tensors) == {f"base_model.model.{p}.lora_{s}.weight" for p in paths for s in "AB"}

    scaling = config["lora_alpha"] / config["r"]
    expected = {}
    for p in paths:
        lora_a, lora_b = tensors[f"base_model.model.{p}.lora_A.weight"], tensors[f"base_model.model.{p}.lora_B.weight"]
        out, inp = weight_out_in(model.get_submodule(p)).shape
        assert lora_a.shape == (r, inp) and lora_b.shape == (out, r)
        delta = scaling * lora_b @ lora_a  # (out, in); PEFT transposes it for fan_in_fan_out
        weight = model.get_submodule(p).weight
        expected[p] = weight + (delta.T if config["fan_in_fan_out"] else delta)
        assert delta.norm() > 1e-3 * weight.norm()
    with merged_documents(model, docs):
        for p in paths:
            got = model.get_submodule(p).weight
            assert ((got - expected[p]).norm() / got.norm()).item() < 1e-6, p


def test_default_base_model_and_errors(tmp_path):
    model = tiny_model("llama")
    model.name_or_path = "local/llama-folder"
    docs = random_doc_params(model, 2)
    config, _ = read_adapter(export_peft(docs[:1], tmp_path / "one"))
    assert config["base_model_name_or_path"] == "local/llama-folder" and config["lora_alpha"] == 32
    docs[1].alpha = 8.0
    with pytest.raises(ValueError, match="document 1 has alpha 8.0"):
        export_peft(docs, tmp_path / "two")
    other = random_doc_params(tiny_model("llama", seed=5), 1)
    with pytest.raises(ValueError, match="document 1 was trained for another model"):
        export_peft(docs[:1] + other, tmp_path / "three")
    with pytest.raises(ValueError, match="at least one document"):
        export_peft([], tmp_path / "four")
    assert not (tmp_path / "two").exists() and not (tmp_path / "three").exists()

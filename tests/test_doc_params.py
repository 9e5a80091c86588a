"""DocParams: init, the file format, load-time validation, the fingerprint and the device cache."""

import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tiny import random_doc_params, tiny_model

from prag_core.model.inject import ffn_module_paths, inject
from prag_core.pairs.doc_params import DocParams, DocParamsError, model_fingerprint


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", layers=2, hidden=32, intermediate=48)


@pytest.fixture
def saved(model, tmp_path):
    doc = random_doc_params(model, 1, seed=1)[0]
    doc.meta.update(training={"lr": 1e-3, "epochs": 2}, doc_sha256="ab" * 32)
    path = tmp_path / "doc.safetensors"
    doc.save(path)
    return doc, path


def rewrite(path, tensors=None, metadata=None):
    """Rewrite a saved file with its tensors and metadata changed by the given functions."""
    with safe_open(str(path), framework="pt") as f:
        meta, data = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    save_file((tensors or (lambda t: t))(data), str(path), metadata=(metadata or (lambda m: m))(meta))


def test_init_a_zero_b_shared_seeded_kaiming(model):
    doc = DocParams.init(model, rank=2, alpha=16.0, b_seed=3)
    assert list(doc.pairs) == ffn_module_paths(model) and doc.rank == 2
    assert doc.meta["targets"] == ["gate_proj", "up_proj", "down_proj"] and doc.meta["b_seed"] == 3
    for path, (a, b) in doc.pairs.items():
        out, inp = model.get_submodule(path).weight.shape
        assert a.shape == (out, 2) and b.shape == (inp, 2)
        assert a.requires_grad and b.requires_grad and a.is_leaf and b.is_leaf
        assert torch.count_nonzero(a) == 0
        bound = 1 / math.sqrt(inp)  # kaiming_uniform(a=√5) on (r, in)
        assert b.abs().max() <= bound and b.abs().max() > 0.8 * bound
    again = DocParams.init(model, rank=2, alpha=16.0, b_seed=3)
    only_down = DocParams.init(model, rank=2, alpha=16.0, b_seed=3, targets=["down_proj"])
    other = DocParams.init(model, rank=2, alpha=16.0, b_seed=4)
    assert list(only_down.pairs) == [p for p in doc.pairs if p.endswith("down_proj")]
    for path, (_, b) in doc.pairs.items():
        assert torch.equal(b, again.pairs[path][1])
        assert not torch.equal(b, other.pairs[path][1])
        if path in only_down.pairs:
            assert torch.equal(b, only_down.pairs[path][1])
    with pytest.raises(ValueError, match="targets"):
        DocParams.init(model, rank=2, alpha=16.0, targets=["q_proj"])


def test_save_load_round_trip(model, saved):
    doc, path = saved
    loaded = DocParams.load(path, fingerprint=model_fingerprint(model))
    assert loaded.alpha == doc.alpha and loaded.rank == doc.rank
    assert loaded.meta == doc.meta
    assert list(loaded.pairs) == list(doc.pairs)
    for p, (a, b) in doc.pairs.items():
        assert torch.equal(loaded.pairs[p][0], a) and torch.equal(loaded.pairs[p][1], b)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["format_version"] == "1" and json.loads(f.metadata()["rank"]) == 2
        assert set(f.keys()) == {f"{p}.{s}" for p in doc.pairs for s in ("lora_a", "lora_b")}
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left
    half = DocParams.load(path, dtype=torch.bfloat16)
    assert next(iter(half.pairs.values()))[0].dtype == torch.bfloat16


def test_fingerprint(model):
    fp = model_fingerprint(model)
    assert fp["model_type"] == "llama" and fp["num_layers"] == 2
    assert fp["hidden_size"] == 32 and fp["intermediate_size"] == 48
    assert fp["projections"] == {"gate_proj": [48, 32], "up_proj": [48, 32], "down_proj": [32, 48]}
    assert model_fingerprint(inject(tiny_model("llama"))) == fp  # injection does not change it
    assert model_fingerprint(tiny_model("llama").to(torch.bfloat16))["weight_hash"] == fp["weight_hash"]
    assert model_fingerprint(tiny_model("llama", seed=1))["weight_hash"] != fp["weight_hash"]


@pytest.mark.parametrize(
    "change, message",
    [
        (
            dict(tensors=lambda t: {**t, "model.layers.1.mlp.up_proj.lora_a": torch.zeros(48, 3)}),
            r"tensor 'model.layers.1.mlp.up_proj.lora_a' has shape \(48, 3\), expected \(48, 2\)",
        ),
        (
            dict(
                tensors=lambda t: {
                    **t,
                    "model.layers.0.mlp.down_proj.lora_b": t["model.layers.0.mlp.down_proj.lora_b"].index_fill(
                        0, torch.tensor([5]), float("nan")
                    ),
                }
            ),
            r"tensor 'model.layers.0.mlp.down_proj.lora_b' has non-finite values",
        ),
        (
            dict(tensors=lambda t: {k: v for k, v in t.items() if k != "model.layers.1.mlp.gate_proj.lora_b"}),
            r"tensor 'model.layers.1.mlp.gate_proj.lora_b' is missing",
        ),
        (
            dict(tensors=lambda t: {**t, "model.layers.2.mlp.gate_proj.lora_a": torch.zeros(48, 2)}),
            r"tensor 'model.layers.2.mlp.gate_proj.lora_a' is not a target",
        ),
        (
            dict(tensors=lambda t: {k: v.double() for k, v in t.items()}),
            r"tensor 'model.layers.0.mlp.gate_proj.lora_a' has dtype torch.float64",
        ),
        (
            dict(
                tensors=lambda t: {
                    **t,
                    "model.layers.0.mlp.up_proj.lora_b": t["model.layers.0.mlp.up_proj.lora_b"].half(),
                }
            ),
            r"tensor 'model.layers.0.mlp.up_proj.lora_b' has dtype torch.float16, the others torch.float32",
        ),
        (dict(metadata=lambda m: {**m, "format_version": "2"}), r"metadata field 'format_version' is 2"),
        (dict(metadata=lambda m: {**m, "alpha": '"sixteen"'}), r"metadata field 'alpha' is 'sixteen'"),
        (dict(metadata=lambda m: {**m, "alpha": "NaN"}), r"metadata field 'alpha' is nan"),
        (dict(metadata=lambda m: {k: v for k, v in m.items() if k != "rank"}), r"metadata field 'rank' is missing"),
        (dict(metadata=lambda m: {**m, "rank": "3"}), r"has shape \(48, 2\), expected \(48, 3\)"),
        (dict(metadata=lambda m: {**m, "targets": '["q_proj"]'}), r"'fingerprint'/'targets'"),
        (dict(metadata=lambda m: {**m, "doc_sha256": '"xyz"'}), r"metadata field 'doc_sha256'"),
        (dict(metadata=lambda m: {**m, "training": "{oops"}), r"metadata field 'training' is not JSON"),
        (dict(metadata=lambda m: {**m, "fingerprint": '{"model_type": "llama"}'}), r"metadata field 'fingerprint'"),
        (
            dict(metadata=lambda m: {**m, "fingerprint": m["fingerprint"].replace('"llama"', '"bert"')}),
            r"unsupported architecture 'bert'",
        ),
    ],
)
def test_load_rejects_bad_files_naming_file_and_field(saved, change, message):
    _, path = saved
    rewrite(path, **change)
    with pytest.raises(DocParamsError, match=message) as err:
        DocParams.load(path)
    assert str(err.value).startswith(f"{path}: ")


def test_load_rejects_another_model(saved):
    _, path = saved
    with pytest.raises(DocParamsError, match=r"doc.safetensors: fingerprint.weight_hash is"):
        DocParams.load(path, fingerprint=model_fingerprint(tiny_model("llama", seed=9)))
    with pytest.raises(DocParamsError, match=r"fingerprint.hidden_size is 32, the model's is 16"):
        DocParams.load(path, fingerprint=model_fingerprint(tiny_model("llama", hidden=16, intermediate=24)))


def test_unreadable_files(tmp_path, model):
    with pytest.raises(DocParamsError, match="nope.safetensors: no such document pair file"):
        DocParams.load(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(DocParamsError, match="junk.safetensors: unreadable document pair"):
        DocParams.load(junk)
    bad = random_doc_params(model, 1)[0]
    next(iter(bad.pairs.values()))[0][0, 0] = float("inf")
    with pytest.raises(DocParamsError, match="non-finite"):
        bad.save(tmp_path / "bad.safetensors")
    assert list(tmp_path.iterdir()) == [junk]  # nothing written

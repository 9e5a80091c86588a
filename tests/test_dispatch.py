"""prag_kernels.dispatch: the table the GPU report writes, the fallback to a card of the same capability, the rule,
and the path the raw launcher then runs (interpreter without a GPU)."""

import json

import pytest
import torch
from test_kernels import TRITON_DEVICE, make_case, reference, rel

from prag_kernels import dispatch, fused_lora_linear_triton
from prag_kernels import fused_lora_triton as ft

H100 = ("NVIDIA H100 80GB HBM3", (9, 0))
ENTRY = dict(dtype="bf16", m=16, r_pad=16, rows="all")


@pytest.fixture
def table(tmp_path, monkeypatch):
    """An empty table file in tmp_path standing in for the shipped one."""
    path = tmp_path / "dispatch_table.json"
    path.write_text(json.dumps({"format": dispatch.FORMAT, "devices": {}}))
    monkeypatch.setattr(dispatch, "TABLE", path)
    dispatch.clear_caches()
    yield path
    dispatch.clear_caches()


def test_keys_classes_and_padding():
    assert [dispatch.m_class(m) for m in (1, 2, 4, 5, 16, 17, 64, 65, 512, 513, 4096, 10**6)] == [
        1, 4, 4, 16, 16, 64, 64, 512, 512, 4096, 4096, 4096,
    ]  # fmt: skip
    assert [dispatch.r_pad(r) for r in (0, 1, 6, 16, 17, 33, 64)] == [16, 16, 16, 16, 32, 64, 64]
    assert dispatch.key(torch.bfloat16, 3, 4096, 14336, 6, True) == ("bf16", 4, 4096, 14336, 16, "per-row")


def test_the_shipped_table_loads_and_a_device_without_entries_takes_the_rule():
    assert isinstance(dispatch.load_table(), dict)
    assert dispatch._choose("a card nobody measured", (8, 9), ("bf16", 1, 4096, 14336, 16, "all")) == dispatch.RULE
    assert dispatch.RULE == ("delta", None)


def test_the_table_decides_then_a_card_of_the_same_capability_then_the_rule(table):
    config = {"BLOCK_M": 16, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 4, "num_stages": 4, "SPLIT_K": 2}
    entries = [
        dict(ENTRY, **{"in": 4096, "out": 14336}, path="fused", config=config, us={"fused": 30.0, "delta": 36.0}),
        dict(ENTRY, **{"in": 14336, "out": 4096}, path="delta", config=None),
    ]
    dispatch.write_device(*H100, entries, source="test")
    up, down = ("bf16", 16, 4096, 14336, 16, "all"), ("bf16", 16, 14336, 4096, 16, "all")
    assert dispatch._choose(H100[0], (9, 0), up) == ("fused", config)
    assert dispatch._choose(H100[0], (9, 0), down) == ("delta", None)
    assert dispatch._choose("NVIDIA H200", (9, 0), up) == ("fused", config)  # same capability: the H100's entry
    assert dispatch._choose("NVIDIA A100-SXM4-80GB", (8, 0), up) == dispatch.RULE
    assert dispatch._choose(H100[0], (9, 0), up[:-1] + ("per-row",)) == dispatch.RULE  # no per-row entry
    # a second device's entries are added beside the first's, and its own entry wins over the similar card's
    dispatch.write_device("NVIDIA H200", (9, 0), [dict(entries[0], path="delta", config=None)], source="test")
    assert dispatch._choose("NVIDIA H200", (9, 0), up) == ("delta", None)
    assert dispatch._choose(H100[0], (9, 0), up) == ("fused", config)
    assert set(json.loads(table.read_text())["devices"]) == {H100[0], "NVIDIA H200"}


@pytest.mark.parametrize(
    "change,field",
    [({"path": "merged"}, "path"), ({"m": 3}, "m"), ({"rows": "some"}, "rows"), ({"out": None}, "out")],
)
def test_a_bad_table_entry_is_one_error_naming_the_file_and_entry(table, change, field):
    entry = dict(ENTRY, **{"in": 64, "out": 32}, path="delta", config=None)
    entry.update(change)
    if change.get("out", 0) is None:
        del entry["out"]
    table.write_text(json.dumps({"format": 1, "devices": {"X": {"capability": [9, 0], "entries": [entry]}}}))
    with pytest.raises(ValueError, match=rf"dispatch_table.json: devices\['X'\].entries\[0\]: .*{field}"):
        dispatch.load_table(table)
    table.write_text(json.dumps({"format": 2, "devices": {}}))
    dispatch.load_table.cache_clear()
    with pytest.raises(ValueError, match="dispatch_table.json: format 2, expected 1"):
        dispatch.load_table(table)


@pytest.mark.parametrize("chosen", ["fused", "delta"])
def test_the_launcher_runs_the_path_the_table_names(table, monkeypatch, chosen):
    """With no path given, fused_lora_linear_triton runs what the table says for this device (here the
    interpreter's "cpu", or the GPU), with the table's config; the result matches the reference either way."""
    name, capability = dispatch._device(torch.device(TRITON_DEVICE))
    case = make_case(5, 3, 40, 33, 3, 2, dtype=torch.float32, device=TRITON_DEVICE)
    config = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "num_warps": 4, "num_stages": 2}
    entry = dict(dtype="fp32", m=4, r_pad=16, rows="all", path=chosen, config=config, **{"in": 40, "out": 33})
    dispatch.write_device(name, capability or (0, 0), [entry], source="test")
    ran = []
    monkeypatch.setattr(
        ft, "_launch", lambda kernel, grid, args, meta: ran.append(kernel) or kernel[grid](*args, **meta)
    )
    y = fused_lora_linear_triton(**case)
    assert ran == [ft._delta_kernel if chosen == "delta" else ft._decode_kernel]
    assert rel(y, reference(case)) < 1e-5

"""Which Triton path serves a call, and with which config: the GPU report's table, else a documented rule.

Two paths compute the same y = x Wᵀ + bias + scale · ((x B_cat) ⊙ w) A_catᵀ (fused_lora_triton.py):

    "fused"  one K-loop for x Wᵀ and x B_cat, the expand in the epilogue (one launch; split-K decode: two)
    "delta"  the vendor GEMM (cuBLAS through F.linear) writes x Wᵀ + bias, then one Triton launch
             (_delta_kernel: shrink and expand fused) adds the documents' term into it, in place

dispatch_table.json, shipped in the package like vLLM's tuned-config JSONs, is written by the GPU report
(bench/gpu/kernel_report.py, `make bench-gpu`): per device name, its compute capability and, for each key

    (dtype, M class, in, out, R_PAD, rows)     M class: the first of M_CLASSES ≥ M (the last one above it)
                                               R_PAD: the total rank D·r padded as the kernels pad it
                                               rows: "all" (every row uses every document) or "per-row"

the fastest correct path and its config (None: the path's own choice, the autotuner's or delta_config's).

A key the call's device has no entry for takes the entry of a card with the same compute capability (an H100's
for an H200 and back: same SMs, same instructions), else the rule: the delta path. Why: the only measurement of
the fused path (H200, 2026-12-04, bench/results/gpu-h200-2026-12-04.md) found it 3-7× F.linear at decode and
2.9× at M = 4096, while the delta path costs the vendor GEMM plus a pass over y and the documents' few bytes.
The fused path serves a key only where a GPU run measured it faster.
"""

import functools
import json
from pathlib import Path

import torch

TABLE = Path(__file__).with_name("dispatch_table.json")
FORMAT = 1
M_CLASSES = (1, 4, 16, 64, 512, 4096)
PATHS = ("fused", "delta")
DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
RULE = ("delta", None)


def m_class(m):
    """The table's class for M rows: the first of M_CLASSES ≥ m, the last one for anything larger."""
    return next((c for c in M_CLASSES if m <= c), M_CLASSES[-1])


def r_pad(total_rank):
    """The stacked rank as the kernels pad it (their R_PAD, one rule for the launcher, the table and the compile
    gate): the next power of two ≥ total_rank, at least 16 (a 16-bit tl.dot needs K ≥ 16)."""
    return max(16, 1 << max(total_rank - 1, 0).bit_length())


def key(dtype, m, k, n, total_rank, per_row):
    """The table key of a call: (dtype name, M class, in, out, R_PAD, "all" | "per-row")."""
    return (DTYPES.get(dtype, str(dtype)), m_class(m), k, n, r_pad(total_rank), "per-row" if per_row else "all")


def choose(x, n, total_rank, per_row):
    """(path, config or None) for x (M, in) times an (n, in) weight with total_rank stacked columns."""
    return choose_for(x.device, x.dtype, *x.shape, n, total_rank, per_row)


def choose_for(device, dtype, m, k, n, total_rank, per_row):
    """choose for a call described by its device, dtype and sizes. (The launcher caches the answer with the rest
    of a call's plan; on_table_change says when to forget it.)"""
    return _choose(*_device(device), key(dtype, m, k, n, total_rank, per_row))


@functools.cache
def _device(device):
    """(name, compute capability) of a CUDA device; (its type, None) elsewhere (the interpreter: the rule)."""
    if device.type != "cuda":
        return device.type, None
    return torch.cuda.get_device_name(device), tuple(torch.cuda.get_device_capability(device))


@functools.lru_cache(maxsize=4096)
def _choose(name, capability, call_key):
    devices = load_table()
    entries = devices.get(name, {}).get("entries", {})
    if call_key in entries:
        return entries[call_key]
    for other in sorted(devices):  # a card of the same capability, in a stable order
        similar = devices[other]
        if capability is not None and similar["capability"] == capability and call_key in similar["entries"]:
            return similar["entries"][call_key]
    return RULE


@functools.cache
def load_table(path=None):
    """{device name: {"capability": (major, minor), "entries": {key: (path, config or None)}}} of the table file
    (default TABLE); a malformed file is a ValueError naming it and the entry."""
    path = path or TABLE
    raw = json.loads(Path(path).read_text())
    if raw.get("format") != FORMAT:
        raise ValueError(f"{path}: format {raw.get('format')!r}, expected {FORMAT}")
    devices = {}
    for name, device in raw["devices"].items():
        entries = {}
        for i, entry in enumerate(device["entries"]):
            try:
                call_key = (entry["dtype"], entry["m"], entry["in"], entry["out"], entry["r_pad"], entry["rows"])
                if entry["path"] not in PATHS or entry["m"] not in M_CLASSES or entry["rows"] not in ("all", "per-row"):
                    raise KeyError("path, m or rows")
            except (KeyError, TypeError) as e:
                raise ValueError(f"{path}: devices[{name!r}].entries[{i}]: bad or missing field {e}") from None
            entries[call_key] = (entry["path"], entry.get("config"))
        devices[name] = {"capability": tuple(device["capability"]), "entries": entries}
    return devices


def write_device(name, capability, entries, source, path=None):
    """Replace one device's entries in the table file (the GPU report's last step); other devices are kept.

    entries: dicts with dtype, m, in, out, r_pad, rows, path, config (None or the block sizes) and whatever
    measurements the report keeps beside them (e.g. "us": {path: µs}); source: what measured them."""
    path = Path(path or TABLE)
    raw = json.loads(path.read_text()) if path.exists() else {"format": FORMAT, "devices": {}}
    raw["devices"][name] = {"capability": list(capability), "source": source, "entries": entries}
    path.write_text(json.dumps(raw, indent=1, sort_keys=True) + "\n")
    clear_caches()


_LISTENERS = []


def on_table_change(forget):
    """Call forget() whenever the table changes (for a cache that holds answers of choose_for)."""
    _LISTENERS.append(forget)


def clear_caches():
    """Forget the loaded table and every answer given (after the table file changed)."""
    load_table.cache_clear()
    _choose.cache_clear()
    for forget in _LISTENERS:
        forget()

"""One document's parametric representation: its LoRA pairs, and their file format (a store's
document files; how a store holds them: docs/design.md, Stores).

For every targeted FFN projection (module path p, weight W_p of shape (out, in)) a
document holds A_p (out, r) and B_p (in, r); applied with α it adds α·A_p B_pᵀ to W_p.

On disk: one safetensors file with tensors `<p>.lora_a` and `<p>.lora_b`, and
header metadata whose values are JSON: format, format_version, alpha, rank,
targets, fingerprint (the base model's, see model_fingerprint) and any other meta
keys (training config, doc_sha256, ...). Loading checks every field and every
tensor and raises DocParamsError naming the file and the field or tensor.
"""

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes

from prag_core.errors import PragError
from prag_core.files import read_safetensors, write_bytes_atomic
from prag_core.model.inject import architecture, ffn_module_paths, ffn_paths, weight_out_in
from prag_core.pairs.choices import INITS

FORMAT = "prag.doc_params"
FORMAT_VERSION = 1
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# fields of a fingerprint that must match between a file and the model it is used with
FINGERPRINT_FIELDS = (
    "model_type",
    "architecture",
    "hidden_size",
    "intermediate_size",
    "num_layers",
    "projections",
    "weight_hash",
)
HASH_SAMPLES = 1024  # weight elements hashed per projection


class DocParamsError(PragError):
    """A document parameter file is malformed or does not fit the model; the message names file and field."""


def model_fingerprint(model):
    """What a document's pairs depend on: architecture, sizes, and a hash of the FFN weights.

    weight_hash: sha256 of HASH_SAMPLES evenly spaced elements of every FFN projection weight,
    rounded to bfloat16, so the same checkpoint loaded in fp32 or bf16, on any device, hashes alike."""
    model_type = model.config.model_type
    paths = ffn_module_paths(model)
    _, names = architecture(model_type)
    modules = {path: model.get_submodule(path) for path in paths}
    projections = {path.rsplit(".", 1)[1]: list(weight_out_in(m).shape) for path, m in modules.items()}
    digest = hashlib.sha256()
    with torch.no_grad():
        for m in modules.values():
            flat = m.weight.reshape(-1)
            n = min(HASH_SAMPLES, flat.numel())
            idx = torch.arange(n, device=flat.device) * (flat.numel() // n)
            digest.update(flat[idx].to(torch.bfloat16).view(torch.int16).cpu().numpy().tobytes())
    return {
        "model_type": model_type,
        "architecture": type(model).__name__,
        "hidden_size": int(model.config.get_text_config().hidden_size),
        "intermediate_size": projections[names[-1]][1],  # the input width of down_proj / c_proj
        "num_layers": len(paths) // len(names),
        "projections": projections,
        "weight_hash": digest.hexdigest(),
        "name_or_path": str(getattr(model, "name_or_path", "") or ""),
    }


@dataclass
class DocParams:
    """One document's pairs: module path -> (A (out, r), B (in, r)), its α, and metadata
    (fingerprint, rank, targets, and whatever the trainer records: training config, doc_sha256)."""

    pairs: dict
    alpha: float
    meta: dict = field(default_factory=dict)

    @property
    def rank(self):
        return next(iter(self.pairs.values()))[0].shape[1]

    def tensors(self):
        """Every A and B, e.g. for an optimizer."""
        return [t for pair in self.pairs.values() for t in pair]

    def to(self, device=None, dtype=None):
        """A copy on `device` / in `dtype` (a no-op per tensor where it already is)."""
        pairs = {p: (a.to(device, dtype), b.to(device, dtype)) for p, (a, b) in self.pairs.items()}
        return DocParams(pairs, self.alpha, dict(self.meta))

    @classmethod
    def init(
        cls, model, rank, alpha, targets=None, b_seed=0, dtype=torch.float32, meta=None, init="shared", doc_key=""
    ):
        """Fresh trainable pairs for `model`: A = 0, and B (in, r) drawn per module path p by `init`:

            shared      PEFT's lora_A init, Kaiming-uniform with a=√5, i.e. U(-1/√in, 1/√in), from a
                        generator seeded by (b_seed, p): every document starts from the same B (PRAG).
            document    the same distribution, seeded by (b_seed, p, doc_key): each document its own B.
            orthogonal  orthonormal columns (QR of a Gaussian seeded like `document`) times 1/√3, the
                        uniform init's standard deviation per entry. Different documents' B's are then
                        nearly orthogonal (random directions in `in` dimensions: |cos| ~ 1/√in); exactly
                        orthogonal ones would need a shared (in, in) basis per projection, too big to keep.

        doc_key: what tells documents apart (build passes the text's sha256). Tensors require grad and
        sit on their projection's device."""
        if init not in INITS:
            raise ValueError(f"init: unknown {init!r}; choose from {', '.join(INITS)}")
        paths = ffn_module_paths(model, targets)
        pairs = {}
        for path in paths:
            weight = weight_out_in(model.get_submodule(path))
            out, inp = weight.shape
            b_t = _init_b(init, rank, inp, f"{b_seed}:{path}", doc_key)
            pairs[path] = (
                torch.zeros(out, rank, dtype=dtype, device=weight.device).requires_grad_(),
                b_t.T.to(weight.device, dtype).contiguous().requires_grad_(),
            )
        _, projections = architecture(model.config.model_type)
        meta = {
            "fingerprint": model_fingerprint(model),
            "rank": rank,
            "targets": [p for p in projections if targets is None or p in targets],
            "b_seed": b_seed,
            **(meta or {}),
        }
        return cls(pairs, float(alpha), meta)

    def save(self, path):
        """Write the file (the format above) atomically (temp file + rename), after the checks load makes."""
        write_bytes_atomic(path, self.to_bytes(path))

    def to_bytes(self, where):
        """The file's bytes, after the checks load makes; `where` names it in errors."""
        metadata, tensors = self.encode(where)
        return safetensors_bytes(tensors, metadata=metadata)

    def encode(self, where):
        """(metadata, tensors) of the file, checked as load checks them; `where` names it in errors.
        (Also what a store shard holds per document.)"""
        header = {"format": FORMAT, "format_version": FORMAT_VERSION, "alpha": self.alpha, **self.meta}
        try:
            metadata = {k: json.dumps(v, sort_keys=True) for k, v in header.items()}
        except TypeError as err:
            raise DocParamsError(f"{where}: metadata is not JSON-serialisable ({err})") from err
        tensors = {}
        for p, (a, b) in self.pairs.items():
            tensors[f"{p}.lora_a"] = a.detach().to("cpu").contiguous()
            tensors[f"{p}.lora_b"] = b.detach().to("cpu").contiguous()
        _validate(where, metadata, tensors)
        return metadata, tensors

    @classmethod
    def load(cls, path, fingerprint=None, device="cpu", dtype=None):
        """Read and check a file; with `fingerprint` (model_fingerprint of the model it will serve) also
        check that it was trained for that model. Raises DocParamsError naming the file and field."""
        path = Path(path)
        metadata, tensors = read_safetensors(path, DocParamsError, "document pair")
        return cls.decode(path, metadata, tensors, fingerprint, device, dtype)

    @classmethod
    def decode(cls, where, metadata, tensors, fingerprint=None, device="cpu", dtype=None):
        """The DocParams of (metadata, tensors) as `encode` gives them, checked like `load` (errors name `where`)."""
        alpha, meta, pairs = _validate(where, metadata, tensors)
        if fingerprint is not None:
            for key in FINGERPRINT_FIELDS:
                if meta["fingerprint"].get(key) != fingerprint.get(key):
                    raise DocParamsError(
                        f"{where}: fingerprint.{key} is {meta['fingerprint'].get(key)!r}, "
                        f"the model's is {fingerprint.get(key)!r} (trained for another model)"
                    )
        pairs = {p: (a.to(device, dtype), b.to(device, dtype)) for p, (a, b) in pairs.items()}
        return cls(pairs, alpha, meta)


def _seed(text):
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def _init_b(init, rank, inp, key, doc_key):
    """B in PEFT's lora_A layout (r, in), see DocParams.init."""
    generator = torch.Generator().manual_seed(_seed(key if init == "shared" else f"{key}:{doc_key}"))
    if init == "orthogonal":
        q, _ = torch.linalg.qr(torch.randn(inp, rank, generator=generator, dtype=torch.float64))
        return (q.T / math.sqrt(3)).float()
    b_t = torch.empty(rank, inp)  # fan_in = in
    torch.nn.init.kaiming_uniform_(b_t, a=math.sqrt(5), generator=generator)
    return b_t


def _validate(path, metadata, tensors):
    """(alpha, meta, pairs) from a file's metadata (str -> JSON str) and tensors, or DocParamsError."""

    def fail(what):
        raise DocParamsError(f"{path}: {what}")

    header = {}
    for key, value in metadata.items():
        try:
            header[key] = json.loads(value)
        except (TypeError, json.JSONDecodeError):
            fail(f"metadata field {key!r} is not JSON: {value!r}")
    for key in ("format", "format_version", "alpha", "rank", "targets", "fingerprint"):
        if key not in header:
            fail(f"metadata field {key!r} is missing")
    if header["format"] != FORMAT:
        fail(f"metadata field 'format' is {header['format']!r}, expected {FORMAT!r}")
    if header["format_version"] != FORMAT_VERSION:
        fail(f"metadata field 'format_version' is {header['format_version']!r}, this prag reads {FORMAT_VERSION}")
    alpha = header["alpha"]
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        fail(f"metadata field 'alpha' is {alpha!r}, expected a finite number")
    rank = header["rank"]
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        fail(f"metadata field 'rank' is {rank!r}, expected a positive integer")
    if "doc_sha256" in header and not re.fullmatch(r"[0-9a-f]{64}", str(header["doc_sha256"])):
        fail(f"metadata field 'doc_sha256' is {header['doc_sha256']!r}, expected 64 hex digits")
    if "training" in header and not isinstance(header["training"], dict):
        fail("metadata field 'training' is not an object")
    fp = header["fingerprint"]
    if not isinstance(fp, dict) or any(k not in fp for k in FINGERPRINT_FIELDS):
        fail(f"metadata field 'fingerprint' must be an object with {', '.join(FINGERPRINT_FIELDS)}")
    try:
        expected = ffn_paths(fp["model_type"], fp["num_layers"], header["targets"])
    except (ValueError, TypeError) as err:
        fail(f"metadata fields 'fingerprint'/'targets': {err}")
    if not expected:
        fail(f"metadata field 'fingerprint.num_layers' is {fp['num_layers']!r}, expected a positive integer")
    extra = sorted(set(tensors) - {f"{p}.{s}" for p in expected for s in ("lora_a", "lora_b")})
    if extra:
        fail(f"tensor {extra[0]!r} is not a target of this {fp['model_type']} model")
    pairs, dtypes = {}, set()
    for p in expected:
        try:
            out, inp = fp["projections"][p.rsplit(".", 1)[1]]
        except (KeyError, TypeError, ValueError):
            fail(f"metadata field 'fingerprint.projections' lacks the [out, in] shape of {p.rsplit('.', 1)[1]}")
        for suffix, shape in (("lora_a", (out, rank)), ("lora_b", (inp, rank))):
            name = f"{p}.{suffix}"
            if name not in tensors:
                fail(f"tensor {name!r} is missing")
            t = tensors[name]
            if t.dtype not in DTYPES:
                fail(f"tensor {name!r} has dtype {t.dtype}, expected one of float32, bfloat16, float16")
            dtypes.add(t.dtype)
            if len(dtypes) > 1:
                fail(f"tensor {name!r} has dtype {t.dtype}, the others {next(iter(dtypes - {t.dtype}))}")
            if tuple(t.shape) != shape:
                fail(f"tensor {name!r} has shape {tuple(t.shape)}, expected {shape}")
            if not torch.isfinite(t).all():
                fail(f"tensor {name!r} has non-finite values")
        pairs[p] = (tensors[f"{p}.lora_a"], tensors[f"{p}.lora_b"])
    meta = {k: v for k, v in header.items() if k not in ("format", "format_version", "alpha")}
    return float(alpha), meta, pairs

"""Drop-in FFN replacement for Hugging Face causal LMs.

`inject(model)` swaps every FFN projection for an `InjectedLinear`, in place. It
keeps the original weight and bias Parameters under the same attribute names, so
`state_dict()` keys and tied weights do not change. With no documents active it
computes exactly what the original module computed (bit-identical). Inside
`use_documents(model, docs)` it computes, through prag_kernels.fused_lora_linear_cat,

    y = x Wᵀ + bias + scale · Σ_{j ∈ S(row)} (x B_j) A_jᵀ

where S(row) is every document of `docs` (one set for the whole batch), or the
row's own set when `docs` is one list per batch row. Weights are never touched.
`weights=` (nested like `docs`) gives document j a factor w_j, i.e. scale·w_j
instead of scale (prag_core.pairs.combine's schemes): folded into the stacked A columns
for one set, the kernel's per-row column weights for per-row sets.

Activation is per call, not shared state: a ContextVar maps each injected layer
to the documents active for it, so threads and asyncio tasks running the same
model with different documents do not interfere. Nesting: an inner context
replaces the outer one for the model it names (`use_documents(model, [])`
switches documents off inside); other models keep theirs. Leaving a context,
also by exception, restores the outer state.

The documents active for a layer are anything that implements `ActiveDocuments`
(the scale α and, per call, the stacked pairs and per-row column weights):
`use_documents` activates a per-call document set, prag_core.model.pool's
DocumentPool its device-resident slots, both through `activated(...)`.

`merged_documents(model, docs)` is the merge baseline: W += scale·Σ_j A_j B_jᵀ in
place, restored bit-exactly on exit. It mutates shared weights, so it is not
thread-safe; it works on injected and plain models alike.
"""

import weakref
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from prag_kernels import column_mask, fused_lora_linear_cat, merge_lora_, restore_

GATED = ("gate_proj", "up_proj", "down_proj")
# model_type -> (path of the decoder-layer list, FFN projections under each layer's `.mlp`),
# the last projection being the one that reads the intermediate activations.
ARCHITECTURES = {
    "llama": ("model.layers", GATED),
    "mistral": ("model.layers", GATED),
    "qwen2": ("model.layers", GATED),
    "qwen3": ("model.layers", GATED),
    "gemma": ("model.layers", GATED),
    "gemma2": ("model.layers", GATED),
    "gemma3_text": ("model.layers", GATED),
    "gemma3": ("model.language_model.layers", GATED),
    "olmo2": ("model.layers", GATED),
    "granite": ("model.layers", GATED),
    "phi3": ("model.layers", ("gate_up_proj", "down_proj")),
    "gpt2": ("transformer.h", ("c_fc", "c_proj")),
}

# layer -> the ActiveDocuments active for it in this context, or None (documents switched off)
_ACTIVE: ContextVar[dict] = ContextVar("prag_active_documents", default={})


class ActiveDocuments(Protocol):
    """What an InjectedLinear asks of the documents active for it: scale (α) and, for one call of `layer` on x,
    prag_kernels.fused_lora_linear_cat's operands: a_cat (out, R), b_cat (in, R) and the per-row column weights
    ((rows or batch, R), or None when every row uses every column)."""

    scale: float

    def operands(self, layer: "InjectedLinear", x: torch.Tensor) -> tuple: ...


@contextmanager
def activated(active):
    """Inside the block, each InjectedLinear in `active` ({layer: ActiveDocuments or None}) uses those documents (None:
    none); every other layer keeps what the enclosing context gave it. Restored on exit, also by exception."""
    token = _ACTIVE.set({**_ACTIVE.get(), **active})
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active_documents():
    """{layer: ActiveDocuments or None} of the current context (a copy; empty outside every context)."""
    return dict(_ACTIVE.get())


def architecture(model_type):
    """(layer-list path, FFN projection names) of a supported model_type; ValueError otherwise."""
    if model_type not in ARCHITECTURES:
        raise ValueError(f"unsupported architecture {model_type!r}; supported: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[model_type]


def ffn_paths(model_type, num_layers, targets=None):
    """Module paths of the FFN projections of a `num_layers` model, layer by layer.

    targets: the projection names to keep (default: all of the architecture's)."""
    layers_path, projections = architecture(model_type)
    targets = projections if targets is None else tuple(targets)
    unknown = [t for t in targets if t not in projections]
    if unknown or not targets:
        raise ValueError(f"targets {list(targets)} for {model_type!r}: choose from {list(projections)}")
    return [f"{layers_path}.{i}.mlp.{p}" for i in range(num_layers) for p in projections if p in targets]


def ffn_module_paths(model, targets=None):
    """Module paths of `model`'s FFN projections (the ones inject swaps), layer by layer."""
    model_type = model.config.model_type
    layers_path, _ = architecture(model_type)
    return ffn_paths(model_type, len(model.get_submodule(layers_path)), targets)


def weight_out_in(module):
    """The (out, in) view of a projection's weight; GPT-2's Conv1D (and its injected form) stores (in, out)."""
    transposed = isinstance(module, Conv1D) or getattr(module, "transposed", False)
    return module.weight.T if transposed else module.weight


class InjectedLinear(nn.Module):
    """One FFN projection: the frozen base weight plus the documents active in the current context."""

    def __init__(self, original, path):
        super().__init__()
        if type(original) not in (nn.Linear, Conv1D):
            raise ValueError(f"{path} is a {type(original).__name__}; only nn.Linear and Conv1D can be injected")
        self.path = path
        self.transposed = isinstance(original, Conv1D)
        self.out_features, self.in_features = weight_out_in(original).shape
        self.weight = original.weight  # the same Parameter objects: state_dict and tied weights unchanged
        self.register_parameter("bias", original.bias)
        object.__setattr__(self, "original", original)  # kept for eject, not registered as a submodule
        _LAYERS[id(self)] = self

    def extra_repr(self):
        return (
            f"{self.path}: in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}{', conv1d' if self.transposed else ''}"
        )

    def forward(self, x):
        if torch.compiler.is_compiling():  # torch.compile cannot read a ContextVar: one opaque op, see below
            return _injected_linear(x, self.weight, self.bias, id(self))
        docs = _ACTIVE.get().get(self)
        if docs is None:
            if self.transposed:  # exactly Conv1D.forward: bias + x W, W stored (in, out)
                return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(*x.shape[:-1], -1)
            return F.linear(x, self.weight, self.bias)
        a_cat, b_cat, row_mask = docs.operands(self, x)
        return fused_lora_linear_cat(x, weight_out_in(self), self.bias, a_cat, b_cat, docs.scale, row_mask)


_LAYERS = weakref.WeakValueDictionary()  # id -> InjectedLinear, for the op below


@torch.library.custom_op("prag::injected_linear", mutates_args=())
def _injected_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, layer: int) -> torch.Tensor:
    """What torch.compile sees of an InjectedLinear: its eager forward as one opaque node, so the documents are
    looked up in the calling context when the node runs. A compiled model (fullgraph=True) thus serves any
    documents, per thread or task, without recompiling. It has no autograd: train documents eagerly."""
    return _LAYERS[layer].forward(x)


@_injected_linear.register_fake
def _(x, weight, bias, layer):
    return x.new_empty((*x.shape[:-1], _LAYERS[layer].out_features))


def _swap_points(model):
    """(parent module, attribute name, module path) of every FFN projection."""
    for path in ffn_module_paths(model):
        parent, name = path.rsplit(".", 1)
        yield model.get_submodule(parent), name, path


def inject(model):
    """Swap every FFN projection of `model` for an InjectedLinear, in place; returns `model`.

    Injecting an injected model changes nothing. Raises ValueError for an unsupported architecture."""
    for parent, name, path in _swap_points(model):
        if not isinstance(getattr(parent, name), InjectedLinear):
            setattr(parent, name, InjectedLinear(getattr(parent, name), path))
    return model


def eject(model):
    """Put the original modules back (with the current weight/bias Parameters); returns `model`."""
    for parent, name, _ in _swap_points(model):
        layer = getattr(parent, name)
        if isinstance(layer, InjectedLinear):
            # reattach the Parameters in case something (e.g. a dtype/device move) replaced them
            layer.original.weight, layer.original.bias = layer.weight, layer.bias
            setattr(parent, name, layer.original)
    return model


def _document_sets(docs, weights=None):
    """(distinct documents, their weights, row index, row weights) from docs given as one set for the
    batch or one set per row, and weights nested the same way (None: all 1).

    For one set: the documents and their weights, row index and row weights None. Per row: the distinct
    documents (weights None), a (batch, J) long row index into them (-1 = empty slot) and the (batch, J)
    float64 weight of each slot."""
    docs = list(docs)
    per_row = [isinstance(d, (list, tuple)) for d in docs]
    if any(per_row) and not all(per_row):
        raise ValueError("docs must be a list of documents or a list of per-row document lists, not a mix")
    flat = [d for row in docs for d in row] if any(per_row) else docs
    if not all(hasattr(d, "pairs") and hasattr(d, "alpha") for d in flat):
        raise ValueError("docs must hold DocParams (objects with .pairs and .alpha)")
    weights = [[1.0] * len(row) for row in docs] if weights is None and any(per_row) else weights
    weights = [1.0] * len(docs) if weights is None else list(weights)
    shapes_match = len(weights) == len(docs) and (
        not any(per_row) or all(isinstance(w, (list, tuple)) and len(w) == len(row) for w, row in zip(weights, docs))
    )
    if not shapes_match:
        raise ValueError("weights must be nested like docs: one number per document (per row, when docs are per row)")
    if not any(per_row):
        return docs, [float(w) for w in weights], None, None
    distinct, position = [], {}
    for row in docs:
        for d in row:
            if id(d) not in position:
                position[id(d)] = len(distinct)
                distinct.append(d)
    if not distinct:
        return [], None, None, None
    width = max(len(row) for row in docs)
    index = torch.full((len(docs), width), -1, dtype=torch.long)
    row_weights = torch.zeros(len(docs), width, dtype=torch.float64)
    for i, (row, w) in enumerate(zip(docs, weights)):
        index[i, : len(row)] = torch.tensor([position[id(d)] for d in row], dtype=torch.long)
        row_weights[i, : len(row)] = torch.tensor([float(x) for x in w], dtype=torch.float64)
    return distinct, None, index, row_weights


def _check_documents(modules, docs, scale):
    """The scale to use, after checking that the documents fit the model and each other."""
    if not docs:
        return 0.0
    paths = set(docs[0].pairs)
    for i, d in enumerate(docs):
        if set(d.pairs) != paths:
            raise ValueError(
                f"document {i} covers other modules than document 0; documents used together "
                f"must share their target projections"
            )
        for path, (a, b) in d.pairs.items():
            if path not in modules:
                raise ValueError(f"document {i}: {path} is not an FFN projection of this model (see ffn_module_paths)")
            out, inp = weight_out_in(modules[path]).shape
            r = docs[0].pairs[path][0].shape[1]
            if a.shape != (out, r) or b.shape != (inp, r):
                raise ValueError(
                    f"document {i}: {path} has A {tuple(a.shape)}, B {tuple(b.shape)}; "
                    f"expected A ({out}, {r}), B ({inp}, {r})"
                )
    if scale is not None:
        return float(scale)
    alphas = sorted({float(d.alpha) for d in docs})
    if len(alphas) > 1:
        raise ValueError(f"documents have different alpha {alphas}; pass scale= explicitly")
    return alphas[0]


def _stack(docs, path, like, weights=None):
    """A_cat (out, D·r) and B_cat (in, D·r): the documents' pairs for `path` side by side along rank, on
    `like`'s device and dtype, document j's A columns times weights[j] (None: 1). A_cat is stored rank-major
    (A_catᵀ contiguous), which the expand reads fastest; B_cat too on CUDA, for the Triton K-loop."""
    a_cat_t = torch.cat([d.pairs[path][0].T for d in docs]).to(like.device, like.dtype)
    if weights is not None and any(w != 1.0 for w in weights):  # in the compute dtype, as the row mask is
        rank = a_cat_t.shape[0] // len(docs)
        a_cat_t = a_cat_t * torch.tensor(weights, device=like.device, dtype=like.dtype).repeat_interleave(rank)[:, None]
    a_cat = a_cat_t.T
    if like.is_cuda:  # B_catᵀ contiguous: the Triton K-loop reads B along `in` in vector copies it can pipeline
        # (a row-major B_cat is a 2-byte gather that the compiled sm_90 K-loop waits on at every step)
        return a_cat, torch.cat([d.pairs[path][1].T for d in docs]).to(like.device, like.dtype).T
    # on the CPU BLAS takes either layout; row-major keeps the rounding a batch's documents have always had
    return a_cat, torch.cat([d.pairs[path][1] for d in docs], dim=1).to(like.device, like.dtype)


class _Documents:
    """One context's documents for one model (an ActiveDocuments), prepared on entry: per layer the pairs stacked
    along rank (one set: with its weights folded into A), and for per-row sets the (batch, D·r) column weights
    (row b weighs column j by the summed weights of its slots that hold j's document; one row per batch
    element serves every sequence length). Trainable documents (tensors requiring grad) are stacked on
    every call instead, so gradients reach them and optimizer steps are seen."""

    def __init__(self, docs, weights, scale, row_index, row_weights, layers):
        self.docs, self.weights, self.scale = docs, weights, scale
        self.row_index, self.row_weights = row_index, row_weights
        self.trainable = any(t.requires_grad for d in docs for pair in d.pairs.values() for t in pair)
        self.stacks = (
            {} if self.trainable else {layer: _stack(docs, layer.path, layer.weight, weights) for layer in layers}
        )
        self.masks = {}  # (device, dtype) -> (batch, D·r) column weights

    def operands(self, layer, x):
        """a_cat, b_cat and the row mask (None: every row uses every document) for one call of `layer`."""
        a_cat, b_cat = (
            _stack(self.docs, layer.path, layer.weight, self.weights) if self.trainable else self.stacks[layer]
        )
        if self.row_index is None:
            return a_cat, b_cat, None
        if x.shape[0] != self.row_index.shape[0]:
            raise ValueError(
                f"{self.row_index.shape[0]} per-row document sets for a batch of {x.shape[0]} rows "
                f"(beam search and num_return_sequences grow the batch: give one set per row)"
            )
        key = (x.device, x.dtype)
        if key not in self.masks:
            rank = a_cat.shape[1] // len(self.docs)
            self.masks[key] = column_mask(self.row_index.to(x.device), len(self.docs), rank, x.dtype, self.row_weights)
        return a_cat, b_cat, self.masks[key]


def ffn_modules(model):
    """{module path: module} of every FFN projection (InjectedLinear once injected)."""
    return {path: model.get_submodule(path) for path in ffn_module_paths(model)}


@contextmanager
def use_documents(model, docs, scale=None, weights=None):
    """Activate documents for the calls (forward, generate) made inside the block, via the fused kernel.

    docs: a list of DocParams applied to every batch row, or one list per batch row (rows may
    differ in length, or be empty). scale: α; default the documents' alpha (they must agree).
    weights: a factor per document, nested like docs (default 1): document j adds scale·w_j·A_j B_jᵀ.
    The model must be injected. Gradients flow to documents whose tensors require grad."""
    modules = ffn_modules(model)
    layers = list(modules.values())
    if not all(isinstance(m, InjectedLinear) for m in layers):
        raise ValueError("the model is not injected: call prag_core.model.inject.inject(model) first")
    distinct, doc_weights, row_index, row_weights = _document_sets(docs, weights)
    scale = _check_documents(modules, distinct, scale)
    covered = [m for m in layers if distinct and m.path in distinct[0].pairs]
    state = _Documents(distinct, doc_weights, scale, row_index, row_weights, covered)
    with activated({m: state if m in covered else None for m in layers}):
        yield


@contextmanager
def merged_documents(model, docs, scale=None, weights=None):
    """The merge baseline: W += scale · A_cat B_catᵀ (= scale · Σ_j w_j A_j B_jᵀ) in place for every projection
    the documents cover, restored bit-exactly on exit, also by exception. Same arguments as use_documents,
    except that per-row sets are an error. Not thread-safe: the weights are shared."""
    distinct, doc_weights, row_index, _ = _document_sets(docs, weights)
    if row_index is not None:
        raise ValueError("merged_documents takes one document set for the whole batch, not one per row")
    modules = ffn_modules(model)
    scale = _check_documents(modules, distinct, scale)
    backups = []
    try:
        with torch.no_grad():
            for path in distinct[0].pairs if distinct else ():
                weight = weight_out_in(modules[path])
                a_cat, b_cat = _stack(distinct, path, weight, doc_weights)  # one adapter of rank D·r: the same sum
                backups.append((weight, merge_lora_(weight, a_cat.unsqueeze(0), b_cat.unsqueeze(0), scale)))
        yield
    finally:
        with torch.no_grad():
            for weight, backup in reversed(backups):
                restore_(weight, backup)

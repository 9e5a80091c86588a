"""A device-resident document pool: fixed slots for P documents' pairs, and per-row weights over them.

For every injected projection the pool preallocates, on the model's device and dtype,

    A_pool (out, P·r)   B_pool (in, P·r)     slot s = columns [s·r, (s+1)·r), rank-major (A_poolᵀ, and on CUDA
                                             B_poolᵀ, contiguous: the layout use_documents stacks)

and one (max_rows, P·r) column-weight tensor W_rows. Row m of a batch computes

    y_m = x_m Wᵀ + bias + α · ((x_m B_pool) ⊙ W_rows[m]) A_poolᵀ

which is the per-row path the kernel already has (prag_kernels.fused_lora_linear_cat with row_mask): a row names
its documents by putting their weights (combine's w_j, the warm-up pair's 1) on their slots' columns. A document
is copied into a free slot once (load), an unused one is evicted least-recently-loaded first, and assigning a row
writes its weights into W_rows in place. Shapes and addresses never change between steps, so a decode step over
the pool can be captured in a CUDA graph; loads run on a side stream on CUDA, so running rows do not wait.

Why P: the kernel takes at most prag_kernels' MAX_RANK (64) stacked columns in its shrink tile, so the default
is P = 64 // r (32 documents at rank 2). Memory is P·r·(in + out) values per projection (SmolLM2-135M, rank 2,
fp32: 49 MB; Llama-3-8B, bf16: 0.3 GB), small beside the model; the cost is the shrink over all P·r columns,
which at decode is (in + out)·P·r bytes against W's in·out (under 4 % for these models).
"""

from collections import OrderedDict
from contextlib import contextmanager

import torch

from prag_core.files import json_digest
from prag_core.model.inject import InjectedLinear, activated, ffn_modules, weight_out_in

MAX_COLUMNS = 64  # prag_kernels.fused_lora_triton.MAX_RANK: the stacked columns one Triton launch takes


class PoolFull(RuntimeError):
    """Every slot holds a document that a row still uses."""


class DocumentPool:
    """P slots of rank-r pairs on an injected model (see the module docstring), an inject.ActiveDocuments. Documents
    are keyed by the caller (a document id); rows are 0..max_rows-1 of the batch the model is called with inside
    activate()."""

    def __init__(self, model, rank, alpha, slots=None, max_rows=16):
        slots = slots or MAX_COLUMNS // rank
        if rank < 1 or slots < 1 or max_rows < 1:
            raise ValueError(f"pool: rank ({rank}), slots ({slots}) and max_rows ({max_rows}) must be ≥ 1")
        weight = next(model.parameters())
        self.model, self.rank, self.alpha, self.slots = model, rank, float(alpha), slots
        layers = [m for m in ffn_modules(model).values() if isinstance(m, InjectedLinear)]
        if not layers:
            raise ValueError("pool: the model is not injected (prag_core.model.inject.inject)")
        self.columns = {}  # layer -> (A_pool, B_pool)
        for layer in layers:
            out, inp = weight_out_in(layer).shape
            like = layer.weight
            a = torch.zeros(slots * rank, out, device=like.device, dtype=like.dtype).T
            b = torch.zeros(slots * rank, inp, device=like.device, dtype=like.dtype)
            self.columns[layer] = (a, b.T if like.is_cuda else b.T.contiguous())
        self.row_weights = torch.zeros(max_rows, slots * rank, device=weight.device, dtype=weight.dtype)
        self.slot_of = OrderedDict()  # document key -> slot, least recently loaded first
        self.users = [0] * slots  # rows assigned to each slot
        self.rows = {}  # row -> its slots
        self.stream = torch.cuda.Stream(weight.device) if weight.is_cuda else None
        self.loaded = None  # CUDA event of the last load, waited for before the next step

    def load(self, key, doc):
        """The slot holding `doc` (DocParams with pairs of rank r on this model's projections), copying it into a
        free slot, or the least recently loaded one no row uses, if `key` is not loaded yet. PoolFull if none."""
        if key in self.slot_of:
            self.slot_of.move_to_end(key)
            return self.slot_of[key]
        taken = set(self.slot_of.values())
        free = [s for s in range(self.slots) if s not in taken]
        if not free:
            evictable = [k for k, s in self.slot_of.items() if self.users[s] == 0]
            if not evictable:
                raise PoolFull(f"pool: all {self.slots} slots hold documents that rows are using")
            free = [self.slot_of.pop(evictable[0])]
        slot = free[0]
        self._copy(doc, slot)
        self.slot_of[key] = slot
        return slot

    def _copy(self, doc, slot):
        if set(doc.pairs) != {layer.path for layer in self.columns}:
            raise ValueError("pool: the document's projections are not the pool's (same model and targets?)")
        columns = slice(slot * self.rank, (slot + 1) * self.rank)
        stream = torch.cuda.stream(self.stream) if self.stream is not None else _no_stream()
        with stream, torch.no_grad():
            for layer, (a, b) in self.columns.items():
                doc_a, doc_b = doc.pairs[layer.path]
                if doc_a.shape[1] != self.rank:
                    raise ValueError(f"pool: {layer.path} has rank {doc_a.shape[1]}, the pool {self.rank}")
                a[:, columns].copy_(doc_a, non_blocking=True)
                b[:, columns].copy_(doc_b, non_blocking=True)
        if self.stream is not None:
            self.loaded = self.stream.record_event()

    def assign(self, row, slots, weights=None):
        """Row `row` uses `slots` (from load), document j with weight weights[j] (default 1; a slot listed twice
        adds its weights), replacing what the row used before; in place."""
        weights = [1.0] * len(slots) if weights is None else list(weights)
        if len(weights) != len(slots):
            raise ValueError(f"pool: {len(weights)} weights for {len(slots)} slots")
        self.release(row)
        mask = torch.zeros(self.slots * self.rank, dtype=torch.float64)
        for slot, w in zip(slots, weights):
            mask[slot * self.rank : (slot + 1) * self.rank] += float(w)
            self.users[slot] += 1
        self.rows[row] = list(slots)
        self.row_weights[row].copy_(mask)

    def release(self, row):
        """Row `row` uses no document (its output is the base model's); its slots may be evicted."""
        for slot in self.rows.pop(row, []):
            self.users[slot] -= 1
        self.row_weights[row].zero_()

    @contextmanager
    def activate(self):
        """Inside the block, the model's batch row m uses the documents assigned to row m (batch ≤ max_rows)."""
        if self.loaded is not None:
            torch.cuda.current_stream(self.loaded.device).wait_event(self.loaded)
        with activated(dict.fromkeys(self.columns, self)):
            yield self

    scale = property(lambda self: self.alpha)

    def operands(self, layer, x):
        """A_pool, B_pool and the rows' column weights for one call of `layer` (InjectedLinear.forward)."""
        a, b = self.columns[layer]
        if x.shape[0] > self.row_weights.shape[0]:
            raise ValueError(f"pool: a batch of {x.shape[0]} rows, the pool has {self.row_weights.shape[0]}")
        return a, b, self.row_weights[: x.shape[0]].to(x.dtype)


@contextmanager
def _no_stream():
    yield


def pool_key(doc):
    """What identifies a document's pairs in the pool: a stored document by id, text and training, the warm-up
    pair by its key; a pair made for one question (dyprag's average) by itself."""
    meta = doc.meta
    if "doc_sha256" in meta:
        return meta.get("doc_id"), meta["doc_sha256"], json_digest(meta.get("training"))
    return meta.get("warmup_key") or id(doc)

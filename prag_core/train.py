"""The per-document training loop (PRAG's offline step 2), ours, no PEFT.

The base model is frozen; each document g gets fresh pairs from DocParams.init
(A = 0, B from one shared seeded init) and only those train, with AdamW (weight
decay 0). The forward pass runs inside `use_documents`, the same fused path that
serves, so what is trained is exactly what is served.

Batched multi-document training. G documents train together: step s of an epoch
takes sequence s of every document (documents with fewer sequences sit that step
out), right-pads them into one batch, and gives row g the per-row set [doc g].
The loss is

    L = Σ_g L_g,   L_g = (1 / |T_g|) Σ_{t ∈ T_g} −log p(x_{g,t+1} | x_{g,≤t})

over the real (unpadded) tokens T_g of row g: every token is a target, as in PRAG.
Row g's output depends only on doc g's pair (causal attention, right padding), so
∂L/∂(A_g, B_g) = ∂L_g/∂(A_g, B_g), the gradient of training doc g alone; AdamW's
state is per parameter, so one optimizer over all pairs steps each document as
its own optimizer would. Batched training therefore equals sequential training,
up to floating-point rounding.
"""
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .doc_params import INITS, DocParams
from .inject import inject, use_documents

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class TrainConfig:
    """What a document's pairs depend on (recorded in every file's metadata as `training`).

    targets: FFN projection names (None = all of the architecture's); dtype: the pairs' dtype;
    seed: the B init's seed; init: how B starts (doc_params.INITS: shared, document, orthogonal);
    construction: samples.build_samples' construction."""
    rank: int = 2
    alpha: float = 16.0
    lr: float = 3e-3
    epochs: int = 4
    targets: tuple | None = None
    dtype: str = "float32"
    seed: int = 0
    construction: str = "prag"
    init: str = "shared"

    def __post_init__(self):
        if self.rank < 1 or self.epochs < 1 or not self.lr > 0 or not math.isfinite(self.alpha):
            raise ValueError(f"training config: rank and epochs must be ≥ 1, lr > 0, alpha finite; got {self}")
        if self.dtype not in DTYPES:
            raise ValueError(f"training config: dtype {self.dtype!r}; choose from {', '.join(DTYPES)}")
        if self.init not in INITS:
            raise ValueError(f"training config: init {self.init!r}; choose from {', '.join(INITS)}")
        if self.targets is not None:
            object.__setattr__(self, "targets", tuple(self.targets))

    def to_dict(self):
        return {**asdict(self), "targets": list(self.targets) if self.targets is not None else None}


def _batch(sequences, pad_id, device):
    """Right-padded input ids (G, T) and the mask of real tokens."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)] = torch.tensor(seq)
        mask[row, :len(seq)] = 1
    return ids.to(device), mask.to(device)


def per_row_loss(logits, ids, mask):
    """L_g for every row: mean next-token loss over the row's real tokens (see the module docstring)."""
    token_loss = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none")
    targets = mask[:, 1:].to(token_loss.dtype)
    return (token_loss * targets).sum(1) / targets.sum(1)


def train_documents(model, tokenizer, samples_per_doc, config=TrainConfig(), progress=True, doc_keys=None):
    """Train one DocParams per entry of `samples_per_doc` (a list of token id lists per document), together.

    doc_keys: one string per document that seeds its B under the per-document inits (build passes the
    text's sha256); default the documents' positions.

    Returns detached DocParams whose meta holds `training` (config.to_dict()) and `losses` (the document's
    mean loss per epoch). The model is injected and frozen (requires_grad False on every parameter)."""
    if not samples_per_doc or not all(samples_per_doc):
        raise ValueError("train_documents needs at least one document, each with at least one sequence")
    inject(model).requires_grad_(False)
    device = next(model.parameters()).device
    doc_keys = [str(g) for g in range(len(samples_per_doc))] if doc_keys is None else list(doc_keys)
    if len(doc_keys) != len(samples_per_doc):
        raise ValueError(f"{len(doc_keys)} doc_keys for {len(samples_per_doc)} documents")
    docs = [DocParams.init(model, config.rank, config.alpha, config.targets, config.seed, DTYPES[config.dtype],
                           meta={"training": config.to_dict()}, init=config.init, doc_key=key) for key in doc_keys]
    optimizer = torch.optim.AdamW([t for d in docs for t in d.tensors()], lr=config.lr, weight_decay=0.0)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    steps = max(len(s) for s in samples_per_doc)
    losses = [[] for _ in docs]
    with tqdm(total=config.epochs * steps, desc=f"train {len(docs)} doc(s)", unit="step", leave=False,
              disable=not progress) as bar:
        for _ in range(config.epochs):
            epoch_loss = [0.0] * len(docs)
            for s in range(steps):
                rows = [g for g, seqs in enumerate(samples_per_doc) if s < len(seqs)]
                ids, mask = _batch([samples_per_doc[g][s] for g in rows], pad_id, device)
                with use_documents(model, [[docs[g]] for g in rows]):
                    logits = model(input_ids=ids, attention_mask=mask).logits
                row_loss = per_row_loss(logits, ids, mask)
                optimizer.zero_grad(set_to_none=True)  # documents absent from this step keep grad None: no update
                row_loss.sum().backward()
                optimizer.step()
                for g, value in zip(rows, row_loss.tolist()):
                    epoch_loss[g] += value
                bar.set_postfix(loss=f"{sum(row_loss.tolist()) / len(rows):.3f}")
                bar.update()
            for g, seqs in enumerate(samples_per_doc):
                losses[g].append(epoch_loss[g] / len(seqs))
    return [DocParams({p: (a.detach(), b.detach()) for p, (a, b) in d.pairs.items()}, d.alpha,
                      {**d.meta, "losses": [round(x, 5) for x in loss]})
            for d, loss in zip(docs, losses)]

"""The per-document training loop (PRAG's offline step 2), ours, no PEFT.

The base model is frozen; each document g gets fresh pairs from DocParams.init
(A = 0, B by config.init) and only those train, with AdamW (weight decay 0). The
forward pass runs inside `use_documents`, the same fused path that serves, so what
is trained is exactly what is served. `base_docs` (the warm-up pair, warmup.py) are
active, frozen, with weight 1 beside every document while it trains, as they are
beside the retrieved documents when serving.

Objectives (config.objective), per document g:

    ntp      L_g = (1 / |T_g|) Σ_{t ∈ T_g} −log p(x_{g,t+1} | x_{g,≤t})
             over the real (unpadded) tokens T_g of g's training sequence: every token is a target, as in PRAG.
    distill  L_g = (1 / |P_g|) Σ_{t ∈ P_g} KL(p_teacher(· | t) ‖ p_student(· | t))
             over the answer positions P_g of a distillation item (samples.DistillItem): the teacher is the
             frozen base model with the passage in the prompt (computed once, no grad, before the first epoch),
             the student the same model with g's pairs and no passage (Knowledge Modules' context distillation,
             arXiv 2503.08727, without its hidden-state term).
    both     the sum of the two.

Batched multi-document training. G documents train together: step s of an epoch takes
sequence (and item) s of every document (documents with fewer sit that step out),
right-pads them into one batch, and gives row g the per-row set [*base_docs, doc g].
The loss is L = Σ_g L_g. Row g's output depends only on doc g's pair (causal
attention, right padding), so ∂L/∂(A_g, B_g) = ∂L_g/∂(A_g, B_g), the gradient of
training doc g alone; AdamW's state is per parameter, so one optimizer over all pairs
steps each document as its own optimizer would. Batched training therefore equals
sequential training, up to floating-point rounding.
"""

from itertools import zip_longest

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from prag_core.errors import PragError
from prag_core.model.inject import inject, use_documents
from prag_core.offline.train_config import DTYPE_NAMES, TrainConfig
from prag_core.pairs.doc_params import DocParams

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}  # TrainConfig.dtype -> the torch dtype


class TrainingError(PragError):
    """Training diverged: `doc` (its position in the batch) had a non-finite loss at `epoch`, `step`."""

    def __init__(self, doc, epoch, step, loss):
        super().__init__(f"loss is {loss} at epoch {epoch + 1}, step {step + 1}")
        self.doc, self.epoch, self.step, self.loss = doc, epoch, step, loss


def _batch(sequences, pad_id, device):
    """Right-padded input ids (G, T) and the mask of real tokens."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return ids.to(device), mask.to(device)


def per_row_loss(logits, ids, mask):
    """L_g for every row: mean next-token loss over the row's real tokens (see the module docstring)."""
    token_loss = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none")
    targets = mask[:, 1:].to(token_loss.dtype)
    return (token_loss * targets).sum(1) / targets.sum(1)


def answer_log_probs(logits, ids_len, answer_len):
    """log p at the positions that predict a sequence's last `answer_len` tokens: (answer_len, V), float32.
    logits (T, V) of one unpadded row of length ids_len."""
    return F.log_softmax(logits[ids_len - answer_len - 1 : ids_len - 1].float(), dim=-1)


@torch.no_grad()
def teacher_log_probs(model, tokenizer, items, device, batch_size=8):
    """The frozen model's answer log-probabilities for every DistillItem, the passage in its prompt."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = []
    with use_documents(model, []):  # the base model, whatever the caller has active
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            ids, mask = _batch([it.teacher for it in batch], pad_id, device)
            logits = model(input_ids=ids, attention_mask=mask).logits
            out += [answer_log_probs(logits[row], len(it.teacher), it.answer_len) for row, it in enumerate(batch)]
    return out


def _kl_rows(logits, items, teacher):
    """L_g of the distill objective for every row: mean KL(teacher ‖ student) over its answer positions."""
    losses = []
    for row, (item, t_logp) in enumerate(zip(items, teacher)):
        s_logp = answer_log_probs(logits[row], len(item.student), item.answer_len)
        losses.append((t_logp.exp() * (t_logp - s_logp)).sum(-1).mean())
    return torch.stack(losses)


def train_documents(
    model,
    tokenizer,
    samples_per_doc,
    config=TrainConfig(),
    progress=True,
    doc_keys=None,
    distill_per_doc=None,
    base_docs=(),
    batch_size=1,
    desc=None,
):
    """Train one DocParams per entry of `samples_per_doc` (a list of token id lists per document), together.

    distill_per_doc: one list of samples.DistillItem per document (objective distill or both).
    base_docs: frozen DocParams active beside every document (the warm-up pair).
    doc_keys: one string per document that seeds its B under the per-document inits (build passes the
    text's sha256); default the documents' positions.
    batch_size: a document's sequences per step; its L_g is then their mean (the warm-up pair, one document
    with every warm-up sequence, trains with 8).

    Returns detached DocParams whose meta holds `training` (config.to_dict()) and `losses` (the document's
    mean loss per epoch). The model is injected and frozen (requires_grad False on every parameter)."""
    uses = {"ntp": (True, False), "distill": (False, True), "both": (True, True)}[config.objective]
    if distill_per_doc is None and uses[1]:
        raise ValueError(f"objective {config.objective!r} needs distill_per_doc")
    # per document, step s of an epoch: (sequence or None, distillation item or None)
    per_doc = [
        list(zip_longest(n if uses[0] else [], d if uses[1] else []))
        for n, d in zip(samples_per_doc, distill_per_doc or [[]] * len(samples_per_doc))
    ]
    if not samples_per_doc or not all(per_doc):
        raise ValueError("train_documents needs at least one document, each with at least one sequence")
    inject(model).requires_grad_(False)
    device = next(model.parameters()).device
    doc_keys = [str(g) for g in range(len(samples_per_doc))] if doc_keys is None else list(doc_keys)
    if len(doc_keys) != len(samples_per_doc):
        raise ValueError(f"{len(doc_keys)} doc_keys for {len(samples_per_doc)} documents")
    docs = [
        DocParams.init(
            model,
            config.rank,
            config.alpha,
            config.targets,
            config.seed,
            DTYPES[config.dtype],
            meta={"training": config.to_dict()},
            init=config.init,
            doc_key=key,
        )
        for key in doc_keys
    ]
    base_docs = list(base_docs)
    optimizer = torch.optim.AdamW([t for d in docs for t in d.tensors()], lr=config.lr, weight_decay=0.0)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    teachers = {}  # (g, i) -> teacher log-probs of document g's distillation item i
    if uses[1]:
        keys = [(g, s) for g, steps in enumerate(per_doc) for s, (_, item) in enumerate(steps) if item is not None]
        teachers = dict(zip(keys, teacher_log_probs(model, tokenizer, [per_doc[g][s][1] for g, s in keys], device)))
    # step s of an epoch takes chunk s of every document (documents with fewer chunks sit it out)
    chunks = [[seqs[i : i + batch_size] for i in range(0, len(seqs), batch_size)] for seqs in per_doc]
    steps = max(len(c) for c in chunks)
    losses = [[] for _ in docs]
    with tqdm(
        total=config.epochs * steps,
        desc=desc or f"train {len(docs)} doc(s)",
        unit="step",
        leave=False,
        disable=not progress,
    ) as bar:
        for epoch in range(config.epochs):
            epoch_loss = [0.0] * len(docs)
            for s in range(steps):
                rows = [
                    (g, k)
                    for g, doc_chunks in enumerate(chunks)
                    if s < len(doc_chunks)
                    for k in range(len(doc_chunks[s]))
                ]
                row_loss = torch.zeros(len(rows), device=device)
                ntp_rows = [i for i, (g, k) in enumerate(rows) if chunks[g][s][k][0] is not None]
                if ntp_rows:
                    ids, mask = _batch([chunks[rows[i][0]][s][rows[i][1]][0] for i in ntp_rows], pad_id, device)
                    with use_documents(model, [[*base_docs, docs[rows[i][0]]] for i in ntp_rows]):
                        logits = model(input_ids=ids, attention_mask=mask).logits
                    row_loss = row_loss.index_add(
                        0, torch.tensor(ntp_rows, device=device), per_row_loss(logits, ids, mask)
                    )
                kd_rows = [i for i, (g, k) in enumerate(rows) if chunks[g][s][k][1] is not None]
                if kd_rows:
                    items = [chunks[rows[i][0]][s][rows[i][1]][1] for i in kd_rows]
                    ids, mask = _batch([it.student for it in items], pad_id, device)
                    with use_documents(model, [[*base_docs, docs[rows[i][0]]] for i in kd_rows]):
                        logits = model(input_ids=ids, attention_mask=mask).logits
                    kl = _kl_rows(logits, items, [teachers[rows[i][0], s * batch_size + rows[i][1]] for i in kd_rows])
                    row_loss = row_loss.index_add(0, torch.tensor(kd_rows, device=device), kl)
                if not torch.isfinite(row_loss).all():  # stop at once: a NaN pair would be stored and served
                    i = int((~torch.isfinite(row_loss)).nonzero()[0])
                    raise TrainingError(rows[i][0], epoch, s, row_loss[i].item())
                # L_g: the mean of document g's rows at this step
                sizes = torch.tensor([len(chunks[g][s]) for g, _ in rows], device=device, dtype=row_loss.dtype)
                doc_loss = row_loss / sizes
                optimizer.zero_grad(set_to_none=True)  # documents absent from this step keep grad None: no update
                doc_loss.sum().backward()
                optimizer.step()
                for (g, _), value in zip(rows, doc_loss.tolist()):
                    epoch_loss[g] += value
                bar.set_postfix(loss=f"{sum(doc_loss.tolist()) / len({g for g, _ in rows}):.3f}")
                bar.update()
            for g, doc_chunks in enumerate(chunks):
                losses[g].append(epoch_loss[g] / len(doc_chunks))
    return [
        DocParams(
            {p: (a.detach(), b.detach()) for p, (a, b) in d.pairs.items()},
            d.alpha,
            {**d.meta, "losses": [round(x, 5) for x in loss]},
        )
        for d, loss in zip(docs, losses)
    ]

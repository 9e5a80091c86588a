"""Continuous batching: rows that generate together one token per step, joining and leaving between steps.

A RunningBatch holds the rows being answered, their KV cache and the token each feeds next. Between two decode
steps

    join(rows)   prefills the new rows together (left-padded, each with its own documents), takes their first
                 token, and appends them to the batch: the two caches are left-padded to one width T and
                 concatenated along the batch, their attention masks likewise;
    step()       feeds every row its next token in one forward call (row m: its own documents, the kernel's
                 per-row path), takes the argmax, and returns the rows that finished; they leave at once
                 (DynamicCache.batch_select_indices), and the left columns that every remaining row pads are
                 cut, so the cache is as wide as its longest row.

Row m's token at step t sits at cache column T-1 with position id n_m (its real tokens so far), and pads are
masked out of attention, which is what Hugging Face's generate does with a left-padded batch: a row's answer
is its answer alone (greedy, the model's generation-config logits processors applied to its own ids; tested
against Pipeline.run). Joining pads only plain KV caches (every layer a DynamicLayer: the attention models);
for a cache with sliding-window or recurrent layers, `continuous` is False and new rows join only an empty
batch (rows still leave as they finish); such a batch's left-padded prefill rounds as Hugging Face's batched
generate does (which, with sliding windows, is not always a row's answer alone).

The documents of the batch's rows are applied by Pipeline's fused update (the document pool when it has one),
entered again only when the batch's rows change, not at every step.
"""

import copy
import inspect
import time
from contextlib import ExitStack

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from prag_core.answer.requests import RowProgress
from prag_core.prompts import left_pad


class _Running:
    """One row in the batch: the Row, its generated ids, its progress, when it joined."""

    def __init__(self, row, tokenizer):
        self.row, self.ids, self.progress, self.start = row, [], RowProgress(tokenizer, row), time.perf_counter()

    def take(self, token):
        """Append the generated `token`; the row's finish, None while it goes on."""
        self.ids.append(token)
        return self.progress.update(self.ids)

    def answer(self):
        text = self.progress.tokenizer.decode(self.ids, skip_special_tokens=True)
        return self.row.answer(text, self.progress.tokens, self.progress.finish, time.perf_counter() - self.start)


class RunningBatch:
    """The rows a Pipeline is answering together (see the module docstring). Not thread-safe: one thread
    drives it."""

    def __init__(self, pipeline):
        self.pipeline, self.model, self.tokenizer = pipeline, pipeline.kb.model, pipeline.kb.tokenizer
        config = copy.deepcopy(self.model.generation_config)
        config.do_sample = False
        self.processors = self.model._get_logits_processor(config, device=self.model.device)
        # the cache's keyword: `cache` since transformers 5.25, `past_key_values` before
        self._cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        self.rows = []  # _Running, in batch order
        self.cache, self.mask, self.next = None, None, None  # DynamicCache, (B, T) long, (B,) long
        self.continuous = True  # False once a cache turns out not to be paddable: join only when empty
        self._documents = ExitStack()  # the rows' documents, applied while the batch's rows stay the same
        self._applied = False

    def __len__(self):
        return len(self.rows)

    def can_join(self):
        return self.continuous or not self.rows

    @torch.inference_mode()
    def join(self, rows):
        """Prefill `rows` and add them to the batch; returns [(Row, Answer)] of those already finished by their
        first token (they do not join)."""
        self._release()
        device = self.model.device
        ids, mask = left_pad([r.prompt for r in rows], self.tokenizer.pad_token_id)
        ids, mask = ids.to(device), mask.to(device)
        cache = DynamicCache(config=self.model.config)
        with self.pipeline._update(rows, "fused"):
            logits = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                use_cache=True,
                **{self._cache_arg: cache},
                logits_to_keep=1,
            ).logits[:, -1]
        new = [_Running(r, self.tokenizer) for r in rows]
        tokens = self._pick(new, logits)
        done = [i for i, (r, t) in enumerate(zip(new, tokens)) if r.take(t) is not None]
        keep = [i for i in range(len(new)) if i not in done]
        finished = [(new[i].row, new[i].answer()) for i in done]
        if keep:
            self.continuous = self.continuous and all(type(layer) is DynamicLayer for layer in cache.layers)
            if len(keep) < len(new):
                cache.batch_select_indices(torch.tensor(keep, device=device))
                mask = _trim_left(cache, mask[keep]) if self.continuous else mask[keep]
            self._append([new[i] for i in keep], cache, mask, torch.tensor([tokens[i] for i in keep], device=device))
        self._apply_documents()
        return finished

    @torch.inference_mode()
    def step(self):
        """One token for every row; returns [(Row, Answer)] of the rows that finished (they have left)."""
        if not self.rows:
            return []
        self._apply_documents()
        width = self.mask.shape[1]
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        logits = self.model(
            input_ids=self.next[:, None],
            attention_mask=self.mask,
            position_ids=(self.mask.sum(-1, keepdim=True) - 1),
            cache_position=torch.tensor([width], device=self.mask.device),
            use_cache=True,
            **{self._cache_arg: self.cache},
            logits_to_keep=1,
        ).logits[:, -1]
        tokens = self._pick(self.rows, logits)
        done = [i for i, (r, t) in enumerate(zip(self.rows, tokens)) if r.take(t) is not None]
        self.next = torch.tensor(tokens, device=self.mask.device)
        finished = [(self.rows[i].row, self.rows[i].answer()) for i in done]
        if done:
            self._leave(done)
        return finished

    def clear(self):
        """Drop every row (after an error); their documents are released."""
        self._release()
        self.rows, self.cache, self.mask, self.next = [], None, None, None

    def _release(self):
        self._documents.close()
        self._applied = False

    def _pick(self, rows, logits):
        """The greedy token of each row, after the generation config's logits processors on the row's own ids."""
        tokens = []
        for r, row_logits in zip(rows, logits):
            seen = torch.tensor([r.row.prompt + r.ids], device=logits.device)
            tokens.append(int(self.processors(seen, row_logits[None].float()).argmax(-1)))
        return tokens

    def _append(self, new, cache, mask, tokens):
        """Add prefilled rows (their cache, mask and first tokens) after the running ones, padding both caches'
        left to one width."""
        if not self.rows:
            self.rows, self.cache, self.mask, self.next = new, cache, mask, tokens
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for old, add in zip(self.cache.layers, cache.layers):
            old.keys = torch.cat([_pad_left(old.keys, width), _pad_left(add.keys, width)])
            old.values = torch.cat([_pad_left(old.values, width), _pad_left(add.values, width)])
        self.mask = torch.cat([_pad_left(self.mask, width, dim=1), _pad_left(mask, width, dim=1)])
        self.next = torch.cat([self.next, tokens])
        self.rows = self.rows + new
        self._release()

    def _leave(self, done):
        """Drop the rows at `done`, then the left columns every remaining row pads."""
        self._release()
        keep = [i for i in range(len(self.rows)) if i not in set(done)]
        if not keep:
            self.clear()
            return
        index = torch.tensor(keep, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.rows, self.mask, self.next = [self.rows[i] for i in keep], self.mask[index], self.next[index]
        if self.continuous:
            self.mask = _trim_left(self.cache, self.mask)

    def _apply_documents(self):
        """Enter the fused update of the batch's rows, unless it is on already for these rows."""
        if self.rows and not self._applied:
            self._documents.enter_context(self.pipeline._update([r.row for r in self.rows], "fused"))
            self._applied = True


def _trim_left(cache, mask):
    """Cut the left columns that every row of `cache` pads (the rows that needed them have left); the mask cut
    alike."""
    unused = int((mask.shape[1] - mask.sum(-1)).min())
    if unused:
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys[:, :, unused:], layer.values[:, :, unused:]
    return mask[:, unused:]


def _pad_left(t, width, dim=-2):
    """`t` with zeros before its columns along `dim` (the cache's sequence axis, or a mask's) up to `width`."""
    missing = width - t.shape[dim]
    if not missing:
        return t
    pad = [0, 0] * (t.dim() - 1 - (dim % t.dim())) + [missing, 0]
    return F.pad(t, pad)

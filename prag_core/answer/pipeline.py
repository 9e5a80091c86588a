"""Retrieve-Update-Generate: answer questions in one of four modes.

    vanilla  the question alone
    rag      the retrieved passages in the prompt
    prag     the retrieved documents' LoRA pairs, question alone
    combine  pairs and passages

Update methods for the pair modes: `fused` (the kernel computes x Wᵀ + α Σ_j (x B_j) A_jᵀ,
weights untouched; each batch row uses its own retrieved documents) and `merge`
(W += α Σ_j A_j B_jᵀ, generate, restore exactly; one document set at a time, so
merge answers a batch one question after the other). How a question's k documents
combine (sum, mean, score-weighted, DyPRAG's averaged pair) is prag_core.pairs.combine's.

Every mode uses the same prompt (prompts.qa_messages, the one the pairs are trained
on) and the same answer format: the assistant turn is primed with ANSWER_PREFIX
("The answer is"), greedy decoding continues it, and the answer is that
continuation cut at the first newline or sentence end, where a sentence ends at
'.', '!' or '?' followed by whitespace or the end of the text (so "3.5" and
"v2.1" stay whole; an abbreviation such as "Dr. Vale" is cut after "Dr", a loss
we accept for one simple rule). Generation of a row stops once its cut point is
known, so short answers cost a few tokens.

`answer(questions, mode)` answers a list of questions alike. A server's rows differ:
`prepare(Request(...))` checks one request (its own mode, top_k or explicit documents,
answer length) and resolves its documents, pairs and prompt, so a bad request fails
alone; `run(rows)` then answers any mix of rows in one generate call (rows without
pairs take no kernel columns, which adds exact zeros), each stopping on its own,
optionally streaming its answer as it settles (Request.on_text) and stopping early
when its Request.cancel is set. With max_hops > 1 a question may take further rounds whose documents its own
answers retrieve (next_hop: the bridge of a two-hop question); run answers the rows that go on together.

A work directory rebuilt while its pipeline is open (a `prag build` beside `prag serve`): a document that has
left W's corpus.jsonl since is neither retrieved nor applied (the Answer lists fewer documents), and one
re-encoded is read again from the store (store.Store looks a replaced payload up again). Only a document that
is still in the corpus but not in the store is an error (a build to finish).
"""

import os
import time
from contextlib import contextmanager, nullcontext

import torch
from transformers import StoppingCriteriaList

from prag_core.answer.config import PAIR_MODES, AnswerConfig
from prag_core.answer.knowledge_base import KnowledgeBase, document_pool
from prag_core.answer.requests import (
    PipelineError,
    PromptTooLong,
    Request,
    Row,
    RowStops,
    UnknownDocument,
    check_request,
)
from prag_core.corpus import iter_corpus
from prag_core.errors import PragError
from prag_core.metrics import normalize_answer
from prag_core.model.inject import inject, merged_documents, use_documents
from prag_core.model.load import context_length
from prag_core.model.pool import pool_key
from prag_core.pairs.combine import combine
from prag_core.prompts import ANSWER_PREFIX, left_pad, qa_messages, render
from prag_core.retrieval.bm25 import RetrievalError

SUBJECT_WORDS = 8  # a document names its subject among its first words (Pipeline._about)


def prompt_ids(tokenizer, question, passages=None):
    """Token ids of the chat prompt, ending with the primed assistant prefix."""
    return tokenizer(render(tokenizer, qa_messages(question, passages)) + ANSWER_PREFIX, add_special_tokens=False)[
        "input_ids"
    ]


class Pipeline:
    """Answers questions over one knowledge base (knowledge_base.KnowledgeBase: model, retriever, document
    parameters, passages, warm-up pair, training tag) as an AnswerConfig says: top_k documents per question, how
    their pairs combine (prag_core.pairs.combine), answer length, hops, and a DocumentPool when pool_slots > 0.
    The model is injected in place. config is frozen: a variant is Pipeline(kb, dataclasses.replace(config, ...))
    or pipeline.config = replace(pipeline.config, ...)."""

    def __init__(self, kb, config=AnswerConfig()):
        check_request(combination=config.combination, temperature=config.temperature)
        if not (isinstance(config.max_hops, int) and config.max_hops >= 1):
            raise PipelineError(f"max_hops: expected a positive integer, got {config.max_hops!r}", field="max_hops")
        if kb.tokenizer.pad_token_id is None:
            raise PipelineError("the tokenizer has no pad token (load_model sets one)")
        inject(kb.model)
        self.kb, self.config = kb, config
        self.pool = document_pool(kb.model, kb.training, config)  # a model.pool.DocumentPool on kb.model, or None
        self._corpus_seen = (None, None)  # (corpus.jsonl's stat key, its ids)

    @classmethod
    def open(cls, workdir, config=AnswerConfig()):
        """The pipeline of a work directory written by `prag build`: its model (from W/config.json),
        retriever (W/config.json's, or config.retriever), corpus passages and parameter store, checked against
        each other."""
        check_request(combination=config.combination, temperature=config.temperature)  # before the model loads
        return cls(KnowledgeBase.open(workdir, config.device, config.retriever), config)

    def retrieve(self, question, k=None):
        """(ids, scores) of the top k documents for `question` (default top_k), best first, less any that has
        left the work directory's corpus since the pipeline opened."""
        hits = self.kb.index.search(question, k=self.config.top_k if k is None else k)
        current = self._current_ids()
        if current is not None:
            hits = [(doc_id, score) for doc_id, score in hits if doc_id in current]
        return [doc_id for doc_id, _ in hits], [float(score) for _, score in hits]

    def _current_ids(self):
        """The ids of the work directory's corpus.jsonl as it is now (read again only when the file changed), or
        None: no work directory, or its corpus unreadable."""
        if self.kb.workdir is None:
            return None
        try:
            st = os.stat(self.kb.workdir.corpus)
        except OSError:
            return None
        key, ids = self._corpus_seen
        if key != (st.st_ino, st.st_mtime_ns, st.st_size):
            try:
                ids = frozenset(d.id for d in iter_corpus(self.kb.workdir.corpus))  # one document at a time
            except (PragError, OSError):
                return None
            self._corpus_seen = ((st.st_ino, st.st_mtime_ns, st.st_size), ids)
        return ids

    def _gone(self, doc_id):
        """Whether `doc_id` has left the work directory's corpus since the pipeline opened (a rebuild)."""
        current = self._current_ids()
        return current is not None and doc_id not in current

    def answer(self, questions, mode="prag", update="fused"):
        """One Answer per question. fused answers the whole list in one generate call (the caller picks
        the batch size); merge answers it one question at a time."""
        check_request(mode=mode, update=update)
        start = time.perf_counter()
        rows = [self.prepare(Request(q, mode)) for q in questions]
        preparing = (time.perf_counter() - start) / len(rows)
        answers = self.run(rows, update)
        for a in answers:
            a.latency_s += preparing
        return answers

    def prepare(self, request):
        """The Row that answers `request`: its documents (retrieved, or the request's own), their pairs combined,
        its prompt. A PipelineError (naming the field) for what the request gets wrong."""
        mode = request.mode
        check_request(request.question, mode)
        k = self.config.top_k if request.top_k is None else request.top_k
        if not (isinstance(k, int) and k >= 1):
            raise PipelineError(f"top_k: expected a positive integer, got {k!r}", field="top_k")
        ids, scores = [], []
        if mode != "vanilla" and request.documents is None:
            ids, scores = self.retrieve(request.question, k)
        elif mode != "vanilla":
            ids = list(request.documents)
            unknown = [d for d in ids if d not in self.kb.documents_text or self._gone(d)]
            if unknown:
                raise UnknownDocument(f"documents: unknown document id {unknown[0]!r}", field="documents")
            scores = [None] * len(ids)  # not ranked: the scheme weighs them as equals
        return self._row(request, ids, scores)

    def next_hop(self, row, answer):
        """The Row of the question's next hop after `row` was answered with `answer`, or None: it is done.

        Hops (docs/design.md, Answering): a round's answer is searched in the retriever. The question goes on
        only when the answer's best document is about the answer (names it among its first words: "Tomas
        Hallbeck was a builder ...") and no round of this question ranked that document first: the answer is
        then a bridge to a document of its own, and the next round applies the pairs of the top_k documents the
        answer retrieves and answers the question again. Otherwise (a year, a colour, a name from the document
        already used: a single-fact question) it is done, at the cost of one search. A question also stops
        after max_hops rounds, or when its answer is empty or the same as the round's before. Vanilla questions
        and those that name their documents take one round."""
        hops = answer.hops
        request = row.request
        if len(hops) >= self.config.max_hops or request.mode == "vanilla" or request.documents is not None:
            return None
        if not answer.prediction or (len(hops) > 1 and hops[-1].answer == hops[-2].answer):
            return None
        k = self.config.top_k if request.top_k is None else request.top_k
        try:
            ids, scores = self.retrieve(answer.prediction, k)
        except RetrievalError:  # an answer with no word to search for ("3.5%" for BM25) points nowhere
            return None
        if not ids or scores[0] <= 0 or ids[0] in {h.docs[0] for h in hops if h.docs}:
            return None
        if not self._about(ids[0], answer.prediction):
            return None
        return self._row(request, ids, scores, hops)

    def _about(self, doc_id, text):
        """Whether the document is about `text`: every word of it is among the document's first SUBJECT_WORDS
        words, where a document names its subject ("Tomas Hallbeck was a builder of ...")."""
        words = set(normalize_answer(text).split())
        opening = normalize_answer(" ".join(self.kb.documents_text.get(doc_id, "").split()[:SUBJECT_WORDS])).split()
        return bool(words) and words <= set(opening)

    def _row(self, request, ids, scores, hops=()):
        """The Row of `request` with documents `ids` (scored `scores`), after `hops`."""
        mode = request.mode
        found = []
        if mode in PAIR_MODES:  # a document that left the corpus since retrieval is answered without
            found = [(d, s, p) for d, s in zip(ids, scores) if (p := self._params(d)) is not None]
            ids, scores = [d for d, _, _ in found], [s for _, s, _ in found]
        with_passages = mode in ("rag", "combine")
        passages = [self._text(d) for d in ids] if with_passages else None
        prompt = prompt_ids(self.kb.tokenizer, request.question, passages)
        max_new = self.config.max_new_tokens if request.max_new_tokens is None else request.max_new_tokens
        self._check_fits(request, prompt, with_passages, max_new)
        params, weights = ([], [])
        if mode in PAIR_MODES:
            params, weights = self._combined([p for _, _, p in found], [s or 0.0 for s in scores])
        return Row(request, ids, scores, params, weights, prompt, max_new, list(hops))

    def run(self, rows, update="fused"):
        """One Answer per prepared Row. fused: all rows in one generate call, each with its own documents; merge:
        one row at a time (merging changes the weights every row sees)."""
        check_request(update=update)
        if update == "merge" and len(rows) > 1 and any(r.params for r in rows):
            return [a for r in rows for a in self.run([r], update)]
        answers = self._run_once(rows, update)
        waiting = [(i, nxt) for i, (r, a) in enumerate(zip(rows, answers)) if (nxt := self.next_hop(r, a)) is not None]
        if waiting:  # the questions that take another hop, together
            for (i, _), later in zip(waiting, self.run([nxt for _, nxt in waiting], update)):
                later.latency_s += answers[i].latency_s
                answers[i] = later
        return answers

    def _run_once(self, rows, update):
        """One Answer per Row from one round of generation (no further hops)."""
        start = time.perf_counter()
        with self._update(rows, update):
            outputs = self._generate(rows)
        per_row = (time.perf_counter() - start) / len(rows)
        return [r.answer(text, tokens, finish, per_row) for r, (text, tokens, finish) in zip(rows, outputs)]

    def _check_fits(self, request, prompt, with_passages, max_new_tokens):
        """PromptTooLong when the prompt leaves no room for max_new_tokens of answer in the model's context: the
        request's max_new_tokens is at fault when the prompt alone fits, else the question."""
        context = context_length(self.kb.model, self.kb.tokenizer)
        if len(prompt) + max_new_tokens <= context:
            return
        passages = " with the passages" if with_passages else ""
        if request.max_new_tokens is not None and len(prompt) < context:
            raise PromptTooLong(
                f"max_tokens: {max_new_tokens} answer tokens do not fit: the prompt is {len(prompt)} tokens{passages} "
                f"and the model's context {context}; ask for at most {context - len(prompt)}",
                field="max_new_tokens",
            )
        question = request.question
        raise PromptTooLong(
            f"question {question[:40]!r}{'…' if len(question) > 40 else ''}: its prompt is {len(prompt)} "
            f"tokens{passages}; with {max_new_tokens} for the "
            f"answer that is more than the model's context of {context}; shorten the question"
            + (" or lower --top-k" if with_passages else ""),
            field="question",
        )

    def _text(self, doc_id):
        if doc_id not in self.kb.documents_text:
            raise PipelineError(
                f"document {doc_id!r} is in the index but not in the corpus; rebuild the work directory"
            )
        return self.kb.documents_text[doc_id]

    def _params(self, doc_id):
        """The document's pairs; None when it has left the work directory's corpus (a rebuild dropped it)."""
        try:
            params = self.kb.store[doc_id]
        except KeyError:
            if self._gone(doc_id):
                return None
            raise PipelineError(
                f"document {doc_id!r} was retrieved but is not in the parameter store; "
                f"run `prag build` again to encode it"
            ) from None
        if self.kb.training is not None and params.meta.get("training") != self.kb.training:
            raise PipelineError(
                f"document {doc_id!r} was trained with other settings than the work directory's "
                f"config.json records (an interrupted `prag build` with new settings?); run that "
                f"`prag build` again to finish"
            )
        return params

    def _combined(self, params, scores):
        """(documents, weights) to activate for one question: its documents' pairs combined by the scheme, and
        the warm-up pair, when there is one, once with weight 1 whatever the scheme."""
        temperature = self.config.temperature * self.kb.index.score_scale  # in the retriever's score units
        docs, weights = combine(params, scores, self.config.combination, temperature)
        if self.kb.warmup is not None:
            return [self.kb.warmup, *docs], [1.0, *weights]
        return docs, weights

    def _update(self, rows, update):
        """The context that applies each row's documents (fused: rows without pairs take none), else nothing."""
        params, weights = [r.params for r in rows], [r.weights for r in rows]
        if not any(params):
            return nullcontext()
        if update == "merge":
            return merged_documents(self.kb.model, params[0], weights=weights[0])
        if self.pool is not None and len(rows) <= self.pool.row_weights.shape[0]:
            return self._pooled(params, weights)
        # One set for the batch when there is one row (the kernel's plain path), else one set per row.
        if len(params) == 1:
            return use_documents(self.kb.model, params[0], weights=weights[0])
        return use_documents(self.kb.model, params, weights=weights)

    @contextmanager
    def _pooled(self, params, weights):
        """Row i's documents loaded into the pool (each once, kept for later questions) and assigned to row i."""
        try:
            for row, (docs, row_weights) in enumerate(zip(params, weights)):
                self.pool.assign(row, [self.pool.load(pool_key(d), d) for d in docs], row_weights)
            with self.pool.activate():
                yield
        finally:
            for row in range(len(params)):
                self.pool.release(row)

    @torch.inference_mode()
    def _generate(self, rows):
        """(text, tokens, finish) per row: the greedy continuation of its prompt, batched with left padding."""
        pad = self.kb.tokenizer.pad_token_id
        ids, mask = left_pad([r.prompt for r in rows], pad)
        width = ids.shape[1]
        device = self.kb.model.device
        stops = RowStops(self.kb.tokenizer, width, rows)
        out = self.kb.model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max(r.max_new_tokens for r in rows),
            do_sample=False,
            stopping_criteria=StoppingCriteriaList([stops]),
            pad_token_id=pad,
            eos_token_id=self.kb.tokenizer.eos_token_id,
            **({"cache_implementation": "static"} if self.pool is not None else {}),
        )
        return [
            (self.kb.tokenizer.decode(out[i, width : width + n], skip_special_tokens=True), n, finish)
            for i, (n, finish) in enumerate(zip(stops.tokens, stops.finish))
        ]

"""Retrieve-Update-Generate: answer questions in one of four modes.

    vanilla  the question alone
    rag      the retrieved passages in the prompt
    prag     the retrieved documents' LoRA pairs, question alone
    combine  pairs and passages

Update methods for the pair modes: `fused` (the kernel computes x Wᵀ + α Σ_j (x B_j) A_jᵀ,
weights untouched; each batch row uses its own retrieved documents) and `merge`
(W += α Σ_j A_j B_jᵀ, generate, restore exactly; one document set at a time, so
merge answers a batch one question after the other). How a question's k documents
combine (sum, mean, score-weighted, DyPRAG's averaged pair) is prag_core.combine's.

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
when its Request.cancel is set.
"""
import json
import re
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from .combine import check_scheme, combine
from .corpus import read_corpus
from .doc_params import DocParams, model_fingerprint
from .inject import inject, merged_documents, use_documents
from .model import context_length, load_model
from .prompts import ANSWER_PREFIX, left_pad, qa_messages, render
from .retrieval import corpus_sha256
from .retrievers import open_retriever
from .store import Store
from .warmup import FILE as WARMUP_FILE

MODES = ("vanilla", "rag", "prag", "combine")
PAIR_MODES = ("prag", "combine")  # the modes that apply documents' pairs
UPDATES = ("fused", "merge")
# Serving defaults (README "Training defaults"): documents per question and how their pairs combine.
TOP_K = 3
COMBINATION = "score"
TEMPERATURE = 1.0
_ANSWER_END = re.compile(r"[.!?](?=\s|$)|\n")
# What the next characters may still change at the end of an unfinished continuation: spaces and sentence
# marks (an end, or part of "3.5"), and the replacement character of a half-decoded multi-byte character.
_UNSETTLED_TAIL = re.compile("[.!?\\s\ufffd]+$")


class PipelineError(ValueError):
    """A question or knowledge base the pipeline cannot serve; one line naming what is wrong.

    field: the Request field at fault (question, mode, update, top_k, documents), None for the knowledge base."""

    def __init__(self, message, field=None):
        super().__init__(message)
        self.field = field


class UnknownDocument(PipelineError):
    """A requested document id that the knowledge base does not hold."""


class PromptTooLong(PipelineError):
    """A prompt that, with the answer's max_new_tokens, does not fit the model's context (refused, not cut)."""


@dataclass
class Request:
    """One question with its own options (a server's row). None: the pipeline's default."""
    question: str
    mode: str = "prag"
    top_k: int | None = None
    documents: list | None = None  # document ids to use instead of retrieval, best first
    max_new_tokens: int | None = None
    on_text: Callable[[str], None] | None = None  # called, from the generating thread, with each settled piece
    cancel: threading.Event | None = None  # once set, the row stops generating (finish "cancelled")


@dataclass
class Row:
    """A checked Request, ready to generate: its documents and scores, their combined pairs, its prompt."""
    request: Request
    docs: list
    scores: list
    params: list  # DocParams to activate (the warm-up pair first, when there is one); empty: no update
    weights: list
    prompt: list  # token ids
    max_new_tokens: int


@dataclass
class Answer:
    question: str
    mode: str
    prediction: str
    docs: list = field(default_factory=list)  # retrieved document ids, best first
    latency_s: float = 0.0  # wall time of the question's share of its batch
    scores: list = field(default_factory=list)  # the documents' retrieval scores
    prompt_tokens: int = 0
    tokens: int = 0  # tokens generated
    finish: str = "stop"  # stop (the answer ended), length (max_new_tokens) or cancelled


def cut_answer(text: str) -> str:
    """The answer proper: the text up to the first newline or sentence end, stripped, without the colon of
    "The answer is: X"."""
    match = _ANSWER_END.search(text)
    return (text[:match.start()] if match else text).strip().removeprefix(":").strip()


def answer_complete(text):
    """Whether the continuation `text` holds an answer end with at least one character after it (a '.' at the
    very end may still become "3.5")."""
    return any(m.group() == "\n" or m.end() < len(text) for m in _ANSWER_END.finditer(text))


def settled_answer(text):
    """The part of the answer that the continuation `text` fixes whatever follows it: the whole answer once it is
    complete, else the answer so far without its unsettled tail. Each value is a prefix of the next one's."""
    return cut_answer(text if answer_complete(text) else _UNSETTLED_TAIL.sub("", text))


def prompt_ids(tokenizer, question, passages=None):
    """Token ids of the chat prompt, ending with the primed assistant prefix."""
    return tokenizer(render(tokenizer, qa_messages(question, passages)) + ANSWER_PREFIX,
                     add_special_tokens=False)["input_ids"]


def check_request(question=None, mode=None, update=None, combination=None, temperature=1.0):
    """PipelineError for an empty question, an unknown mode, update method or combination scheme, or a bad
    temperature (those given)."""
    if question is not None and (not isinstance(question, str) or not question.strip()):
        raise PipelineError(f"question: empty ({question!r})", field="question")
    if mode is not None and mode not in MODES:
        raise PipelineError(f"mode: unknown {mode!r}; choose from {', '.join(MODES)}", field="mode")
    if update is not None and update not in UPDATES:
        raise PipelineError(f"update: unknown {update!r}; choose from {', '.join(UPDATES)}", field="update")
    if combination is not None:
        try:
            check_scheme(combination, temperature)
        except ValueError as err:
            raise PipelineError(str(err)) from None


class _RowStops(StoppingCriteria):
    """Per row: done once its continuation is a complete answer or ends with end-of-turn (finish "stop"), holds
    its max_new_tokens ("length"), or its cancel event is set ("cancelled"). Hands each row's newly settled
    answer text to its on_text, and records per row the tokens generated and the finish."""

    def __init__(self, tokenizer, prompt_width, rows):
        self.tokenizer, self.prompt_width, self.rows = tokenizer, prompt_width, rows
        self.tokens, self.finish, self.sent = [0] * len(rows), [None] * len(rows), [""] * len(rows)

    def __call__(self, input_ids, scores, **kwargs):
        for i, row in enumerate(self.rows):
            if self.finish[i] is not None:
                continue
            new = input_ids[i, self.prompt_width:]
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            self.tokens[i] = len(new)
            if row.request.cancel is not None and row.request.cancel.is_set():
                self.finish[i] = "cancelled"
            elif answer_complete(text) or new[-1] == self.tokenizer.eos_token_id:
                self.finish[i] = "stop"
            elif len(new) >= row.max_new_tokens:
                self.finish[i] = "length"
            if row.request.on_text is not None and self.finish[i] != "cancelled":
                answer = cut_answer(text) if self.finish[i] else settled_answer(text)
                if len(answer) > len(self.sent[i]):
                    row.request.on_text(answer[len(self.sent[i]):])
                    self.sent[i] = answer
        return torch.tensor([f is not None for f in self.finish], dtype=torch.bool, device=input_ids.device)


class Pipeline:
    """Answers questions over one knowledge base: a model, a retriever (prag_core.retrievers), document
    parameters, passages.

    store: a mapping from document id to DocParams (a dict, or a work directory's store.Store).
    documents_text: a mapping from document id to its passage text (for rag and combine).
    combination, temperature: how the top_k documents' pairs combine (prag_core.combine).
    warmup: the warm-up pair (prag_core.warmup), active with weight 1 beside every question's documents in
    the pair modes, or None.
    training: the training tag (TrainConfig.to_dict()) every served document must carry, so a store left
    half re-encoded by an interrupted rebuild is refused, not mixed; None = not checked."""

    def __init__(self, model, tokenizer, index, store, documents_text, top_k=TOP_K, max_new_tokens=32,
                 combination=COMBINATION, temperature=TEMPERATURE, warmup=None, training=None):
        check_request(combination=combination, temperature=temperature)
        if tokenizer.pad_token_id is None:
            raise PipelineError("the tokenizer has no pad token (load_model sets one)")
        self.model = inject(model)
        self.tokenizer = tokenizer
        self.index = index
        self.store = store
        self.documents_text = documents_text
        self.top_k = top_k
        self.max_new_tokens = max_new_tokens
        self.combination, self.temperature = combination, temperature
        self.warmup = warmup
        self.training = training

    @classmethod
    def open(cls, workdir, device=None, top_k=TOP_K, max_new_tokens=32, combination=COMBINATION,
             temperature=TEMPERATURE, retriever=None):
        """The pipeline of a work directory written by `prag build`: its model (from W/config.json),
        retriever (W/config.json's, or `retriever`), corpus passages and parameter store, checked against
        each other."""
        model, tokenizer, index, store, texts, warmup, training = _open_workdir(Path(workdir), device, retriever)
        return cls(model, tokenizer, index, store, texts, top_k, max_new_tokens, combination, temperature, warmup,
                   training)

    def retrieve(self, question, k=None):
        """(ids, scores) of the top k documents for `question` (default top_k), best first."""
        hits = self.index.search(question, k=self.top_k if k is None else k)
        return [doc_id for doc_id, _ in hits], [float(score) for _, score in hits]

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
        k = self.top_k if request.top_k is None else request.top_k
        if not (isinstance(k, int) and k >= 1):
            raise PipelineError(f"top_k: expected a positive integer, got {k!r}", field="top_k")
        ids, scores = [], []
        if mode != "vanilla" and request.documents is None:
            ids, scores = self.retrieve(request.question, k)
        elif mode != "vanilla":
            ids = list(request.documents)
            unknown = [d for d in ids if d not in self.documents_text]
            if unknown:
                raise UnknownDocument(f"documents: unknown document id {unknown[0]!r}", field="documents")
            scores = [None] * len(ids)  # not ranked: the scheme weighs them as equals
        with_passages = mode in ("rag", "combine")
        prompt = prompt_ids(self.tokenizer, request.question, [self._text(d) for d in ids] if with_passages else None)
        max_new = self.max_new_tokens if request.max_new_tokens is None else request.max_new_tokens
        self._check_fits(request.question, prompt, with_passages, max_new)
        params, weights = self._combined(ids, [s or 0.0 for s in scores]) if mode in PAIR_MODES else ([], [])
        return Row(request, ids, scores, params, weights, prompt, max_new)

    def run(self, rows, update="fused"):
        """One Answer per prepared Row. fused: all rows in one generate call, each with its own documents; merge:
        one row at a time (merging changes the weights every row sees)."""
        check_request(update=update)
        if update == "merge" and len(rows) > 1 and any(r.params for r in rows):
            return [a for r in rows for a in self.run([r], update)]
        start = time.perf_counter()
        with self._update(rows, update):
            outputs = self._generate(rows)
        per_row = (time.perf_counter() - start) / len(rows)
        return [Answer(r.request.question, r.request.mode, cut_answer(text), r.docs, per_row, r.scores, len(r.prompt),
                       tokens, finish)
                for r, (text, tokens, finish) in zip(rows, outputs)]

    def _check_fits(self, question, prompt, with_passages, max_new_tokens):
        """PromptTooLong when the prompt leaves no room for max_new_tokens of answer in the model's context."""
        context = context_length(self.model, self.tokenizer)
        if len(prompt) + max_new_tokens > context:
            raise PromptTooLong(
                f"question {question[:40]!r}{'…' if len(question) > 40 else ''}: its prompt is {len(prompt)} "
                f"tokens{' with the passages' if with_passages else ''}; with {max_new_tokens} for the "
                f"answer that is more than the model's context of {context}; shorten the question"
                + (" or lower --top-k" if with_passages else ""), field="question")

    def _text(self, doc_id):
        if doc_id not in self.documents_text:
            raise PipelineError(f"document {doc_id!r} is in the index but not in the corpus; rebuild the work directory")
        return self.documents_text[doc_id]

    def _params(self, doc_id):
        if doc_id not in self.store:
            raise PipelineError(f"document {doc_id!r} was retrieved but is not in the parameter store; "
                                f"run `prag build` again to encode it")
        params = self.store[doc_id]
        if self.training is not None and params.meta.get("training") != self.training:
            raise PipelineError(f"document {doc_id!r} was trained with other settings than the work directory's "
                                f"config.json records (an interrupted `prag build` with new settings?); run that "
                                f"`prag build` again to finish")
        return params

    def _combined(self, ids, scores):
        """(documents, weights) to activate for one question: its documents combined by the scheme, and the
        warm-up pair, when there is one, once with weight 1 whatever the scheme."""
        temperature = self.temperature * self.index.score_scale  # in the retriever's score units
        docs, weights = combine([self._params(d) for d in ids], scores, self.combination, temperature)
        if self.warmup is not None:
            return [self.warmup, *docs], [1.0, *weights]
        return docs, weights

    def _update(self, rows, update):
        """The context that applies each row's documents (fused: rows without pairs take none), else nothing."""
        params, weights = [r.params for r in rows], [r.weights for r in rows]
        if not any(params):
            return nullcontext()
        if update == "merge":
            return merged_documents(self.model, params[0], weights=weights[0])
        # One set for the batch when there is one row (the kernel's plain path), else one set per row.
        if len(params) == 1:
            return use_documents(self.model, params[0], weights=weights[0])
        return use_documents(self.model, params, weights=weights)

    @torch.inference_mode()
    def _generate(self, rows):
        """(text, tokens, finish) per row: the greedy continuation of its prompt, batched with left padding."""
        pad = self.tokenizer.pad_token_id
        ids, mask = left_pad([r.prompt for r in rows], pad)
        width = ids.shape[1]
        device = self.model.device
        stops = _RowStops(self.tokenizer, width, rows)
        out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                  max_new_tokens=max(r.max_new_tokens for r in rows), do_sample=False,
                                  stopping_criteria=StoppingCriteriaList([stops]),
                                  pad_token_id=pad, eos_token_id=self.tokenizer.eos_token_id)
        return [(self.tokenizer.decode(out[i, width:width + n], skip_special_tokens=True), n, finish)
                for i, (n, finish) in enumerate(zip(stops.tokens, stops.finish))]


def _open_workdir(workdir, device, retriever=None):
    """(model, tokenizer, index, store, passages, warm-up pair or None, training tag or None) of a built work
    directory, or a one-line PipelineError."""
    config_file = workdir / "config.json"
    if workdir.exists() and not workdir.is_dir():
        raise PipelineError(f"{workdir}: a file, not a work directory")
    if not workdir.is_dir():
        raise PipelineError(f"{workdir}: no such work directory; create it with "
                            f"`prag build --corpus corpus.jsonl --workdir {workdir}`")
    if not config_file.is_file():
        raise PipelineError(f"{workdir}: not a prag work directory (no config.json); run `prag build` into it")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PipelineError(f"{config_file}: unreadable ({err})") from None
    corpus = read_corpus(workdir / "corpus.jsonl")
    model_path = config.get("model")
    if model_path and Path(model_path).is_absolute() and not Path(model_path).exists():
        raise PipelineError(f"{config_file}: the model folder of its 'model' entry, {model_path}, does not exist "
                            f"(moved?); put the model back or set 'model' to where it is now")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    index = open_retriever(workdir, retriever or config.get("retriever", "bm25"),  # bm25: built before retrievers
                           corpus_sha256(corpus), config.get("embedder"), device)
    model, tokenizer = load_model(model_path, device=device)
    # A store built for another model is refused (StoreError); each document is checked again on load, and
    # 16-bit stored pairs are upcast for an fp32 model.
    fingerprint = model_fingerprint(model)
    store = Store(workdir / "store", fingerprint, device=device, compute_dtype=model.dtype)
    warmup = None
    if config.get("warmup"):
        warmup = DocParams.load(workdir / WARMUP_FILE, fingerprint, device=device, dtype=model.dtype)
        if warmup.meta.get("warmup_key") != config["warmup"]:
            raise PipelineError(f"{workdir / WARMUP_FILE}: another warm-up pair than the store was trained with; "
                                f"run `prag build` again")
    return model, tokenizer, index, store, {doc.id: doc.text for doc in corpus}, warmup, config.get("training")

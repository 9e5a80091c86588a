"""A question as `prag ask`, `eval` and `serve` pose it, and its answer: the per-row contract of
Pipeline.prepare and Pipeline.run (answer/pipeline.py).

Request    one question with its own options (mode, top_k, explicit documents, answer length, streaming, cancel)
Row        a checked Request, ready to generate: its documents, combined pairs and prompt
Answer     what comes back: the prediction, documents, scores, token counts, finish reason, and its hops
Hop        one Retrieve-Update-Generate round of a question: the documents it applied and the answer it wrote
RowStops  per-row stopping during one batched generate call: a complete answer, end of turn, the row's
           max_new_tokens, or its cancel event; it streams each row's settled answer text
The answer format: the continuation of ANSWER_PREFIX cut at the first newline or sentence end (cut_answer).
"""

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria

from prag_core.answer.config import MODES, UPDATES
from prag_core.errors import PragError
from prag_core.files import lone_surrogate
from prag_core.pairs.choices import check_scheme

_ANSWER_END = re.compile(r"[.!?](?=\s|$)|\n")
# What the next characters may still change at the end of an unfinished continuation: spaces and sentence
# marks (an end, or part of "3.5"), and the replacement character of a half-decoded multi-byte character.
_UNSETTLED_TAIL = re.compile("[.!?\\s\ufffd]+$")


class PipelineError(PragError):
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
class Hop:
    """One round of a question: the documents retrieved (best first) with their scores and the weights their
    pairs were applied with (None where the scheme gives none per document: dyprag), and the answer."""

    docs: list
    scores: list
    weights: list | None
    answer: str

    def to_dict(self):
        return {"documents": self.docs, "scores": self.scores, "weights": self.weights, "answer": self.answer}


@dataclass
class Row:
    """A checked Request, ready to generate: its documents and scores, their combined pairs, its prompt, and
    the hops the question took before this one."""

    request: Request
    docs: list
    scores: list
    params: list  # DocParams to activate (the warm-up pair first, when there is one); empty: no update
    weights: list
    prompt: list  # token ids
    max_new_tokens: int
    hops: list = field(default_factory=list)  # earlier Hops

    def answer(self, text, tokens, finish, latency_s):
        """The Answer of this row, given its generated text (cut here), tokens and finish."""
        r, prediction = self.request, cut_answer(text)
        hop = Hop(self.docs, self.scores, self.doc_weights(), prediction)
        return Answer(
            r.question,
            r.mode,
            prediction,
            self.docs,
            latency_s,
            self.scores,
            len(self.prompt),
            tokens,
            finish,
            [*self.hops, hop],
        )

    def doc_weights(self):
        """The weight each of `docs` was applied with (the warm-up pair's left out), or None."""
        weights = self.weights[len(self.weights) - len(self.docs) :] if self.params else []
        return [float(w) for w in weights] if len(weights) == len(self.docs) and self.docs else None


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
    hops: list = field(default_factory=list)  # every Hop, the last one this answer's


def cut_answer(text: str) -> str:
    """The answer proper: the text up to the first newline or sentence end, stripped, without the colon of
    "The answer is: X"."""
    match = _ANSWER_END.search(text)
    return (text[: match.start()] if match else text).strip().removeprefix(":").strip()


def answer_complete(text):
    """Whether the continuation `text` holds an answer end with at least one character after it (a '.' at the
    very end may still become "3.5")."""
    return any(m.group() == "\n" or m.end() < len(text) for m in _ANSWER_END.finditer(text))


def settled_answer(text):
    """The part of the answer that the continuation `text` fixes whatever follows it: the whole answer once it is
    complete, else the answer so far without its unsettled tail. Each value is a prefix of the next one's."""
    return cut_answer(text if answer_complete(text) else _UNSETTLED_TAIL.sub("", text))


def check_request(question=None, mode=None, update=None, combination=None, temperature=1.0):
    """PipelineError for an empty question or one that is not text (a lone surrogate: a JSON escape "\\ud800", or
    a byte of a command-line argument that is not UTF-8), an unknown mode, update method or combination scheme,
    or a bad temperature (those given)."""
    if question is not None and (not isinstance(question, str) or not question.strip()):
        raise PipelineError(f"question: empty ({question!r})", field="question")
    if question is not None and lone_surrogate(question):
        raise PipelineError(
            f"question: holds a lone surrogate ({ascii(question[:40])}), not text: a \\ud800-\\udfff escape "
            f"that is half of no pair, or bytes that are not UTF-8",
            field="question",
        )
    if mode is not None and mode not in MODES:
        raise PipelineError(f"mode: unknown {mode!r}; choose from {', '.join(MODES)}", field="mode")
    if update is not None and update not in UPDATES:
        raise PipelineError(f"update: unknown {update!r}; choose from {', '.join(UPDATES)}", field="update")
    if combination is not None:
        try:
            check_scheme(combination, temperature)
        except ValueError as err:
            raise PipelineError(str(err)) from None


class RowProgress:
    """One row's answer as it is generated: done once its continuation is a complete answer or ends with
    end-of-turn (finish "stop"), holds its max_new_tokens ("length"), or its cancel event is set ("cancelled").
    Hands the newly settled answer text to the request's on_text, and records the tokens generated."""

    def __init__(self, tokenizer, row):
        self.tokenizer, self.row = tokenizer, row
        self.tokens, self.finish, self.sent = 0, None, ""

    def update(self, new):
        """Take the row's generated ids so far (`new`, a sequence); its finish, None while it goes on."""
        if self.finish is not None:
            return self.finish
        request = self.row.request
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        self.tokens = len(new)
        if request.cancel is not None and request.cancel.is_set():
            self.finish = "cancelled"
        elif answer_complete(text) or new[-1] == self.tokenizer.eos_token_id:
            self.finish = "stop"
        elif len(new) >= self.row.max_new_tokens:
            self.finish = "length"
        if request.on_text is not None and self.finish != "cancelled":
            answer = cut_answer(text) if self.finish else settled_answer(text)
            if len(answer) > len(self.sent):
                request.on_text(answer[len(self.sent) :])
                self.sent = answer
        return self.finish


class RowStops(StoppingCriteria):
    """RowProgress for each row of a generate call over left-padded prompts `prompt_width` tokens wide."""

    def __init__(self, tokenizer, prompt_width, rows):
        self.prompt_width, self.rows = prompt_width, [RowProgress(tokenizer, row) for row in rows]

    tokens = property(lambda self: [r.tokens for r in self.rows])
    finish = property(lambda self: [r.finish for r in self.rows])

    def __call__(self, input_ids, scores, **kwargs):
        done = [row.update(input_ids[i, self.prompt_width :]) is not None for i, row in enumerate(self.rows)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

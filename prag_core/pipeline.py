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
"""
import json
import re
import time
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
UPDATES = ("fused", "merge")
# Serving defaults (README "Training defaults"): documents per question and how their pairs combine.
TOP_K = 3
COMBINATION = "score"
TEMPERATURE = 1.0
_ANSWER_END = re.compile(r"[.!?](?=\s|$)|\n")


class PipelineError(ValueError):
    """A question or knowledge base the pipeline cannot serve; one line naming what is wrong."""


class PromptTooLong(PipelineError):
    """A prompt that, with the answer's max_new_tokens, does not fit the model's context (refused, not cut)."""


@dataclass
class Answer:
    question: str
    mode: str
    prediction: str
    docs: list = field(default_factory=list)  # retrieved document ids, best first
    latency_s: float = 0.0  # wall time of the question's share of its batch
    scores: list = field(default_factory=list)  # the documents' retrieval scores


def cut_answer(text: str) -> str:
    """The answer proper: the text up to the first newline or sentence end, stripped, without the colon of
    "The answer is: X"."""
    match = _ANSWER_END.search(text)
    return (text[:match.start()] if match else text).strip().removeprefix(":").strip()


def prompt_ids(tokenizer, question, passages=None):
    """Token ids of the chat prompt, ending with the primed assistant prefix."""
    return tokenizer(render(tokenizer, qa_messages(question, passages)) + ANSWER_PREFIX,
                     add_special_tokens=False)["input_ids"]


def check_request(question=None, mode=None, update=None, combination=None, temperature=1.0):
    """PipelineError for an empty question, an unknown mode, update method or combination scheme, or a bad
    temperature (those given)."""
    if question is not None and (not isinstance(question, str) or not question.strip()):
        raise PipelineError(f"question: empty ({question!r})")
    if mode is not None and mode not in MODES:
        raise PipelineError(f"mode: unknown {mode!r}; choose from {', '.join(MODES)}")
    if update is not None and update not in UPDATES:
        raise PipelineError(f"update: unknown {update!r}; choose from {', '.join(UPDATES)}")
    if combination is not None:
        try:
            check_scheme(combination, temperature)
        except ValueError as err:
            raise PipelineError(str(err)) from None


class _AnswerComplete(StoppingCriteria):
    """Per row: done once the continuation holds an answer end with at least one character after it
    (a '.' at the very end may still become "3.5")."""

    def __init__(self, tokenizer, prompt_width):
        self.tokenizer, self.prompt_width = tokenizer, prompt_width

    def __call__(self, input_ids, scores, **kwargs):
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width:], skip_special_tokens=True)
        done = [any(m.group() == "\n" or m.end() < len(t) for m in _ANSWER_END.finditer(t)) for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


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

    def retrieve(self, question):
        """(ids, scores) of the top_k documents for `question`, best first."""
        hits = self.index.search(question, k=self.top_k)
        return [doc_id for doc_id, _ in hits], [float(score) for _, score in hits]

    def answer(self, questions, mode="prag", update="fused"):
        """One Answer per question. fused answers the whole list in one generate call (the caller picks
        the batch size); merge answers it one question at a time."""
        check_request(mode=mode, update=update)
        for q in questions:
            check_request(question=q)
        if update == "merge" and mode in ("prag", "combine") and len(questions) > 1:
            return [a for q in questions for a in self.answer([q], mode, update)]
        start = time.perf_counter()
        hits = [self.retrieve(q) if mode != "vanilla" else ([], []) for q in questions]
        doc_ids = [ids for ids, _ in hits]
        with_passages = mode in ("rag", "combine")
        prompts = [prompt_ids(self.tokenizer, q, [self._text(d) for d in ids] if with_passages else None)
                   for q, ids in zip(questions, doc_ids)]
        self._check_fits(questions, prompts, with_passages)
        with self._update(mode, update, hits):
            texts = self._generate(prompts)
        per_question = (time.perf_counter() - start) / len(questions)
        return [Answer(q, mode, cut_answer(t), ids, per_question, scores)
                for q, t, (ids, scores) in zip(questions, texts, hits)]

    def _check_fits(self, questions, prompts, with_passages):
        """PromptTooLong for the first prompt with no room left for the answer in the model's context."""
        context = context_length(self.model, self.tokenizer)
        for question, prompt in zip(questions, prompts):
            if len(prompt) + self.max_new_tokens > context:
                raise PromptTooLong(
                    f"question {question[:40]!r}{'…' if len(question) > 40 else ''}: its prompt is {len(prompt)} "
                    f"tokens{' with the passages' if with_passages else ''}; with {self.max_new_tokens} for the "
                    f"answer that is more than the model's context of {context}; shorten the question"
                    + (" or lower --top-k" if with_passages else ""))

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

    def _update(self, mode, update, hits):
        """The context that applies each row's documents, combined by the scheme (pair modes), else nothing."""
        if mode not in ("prag", "combine"):
            return nullcontext()
        temperature = self.temperature * self.index.score_scale  # in the retriever's score units
        rows = [combine([self._params(d) for d in ids], scores, self.combination, temperature)
                for ids, scores in hits]
        if self.warmup is not None:  # once per question, weight 1, whatever the scheme
            rows = [([self.warmup, *docs], [1.0, *w]) for docs, w in rows]
        params, weights = [docs for docs, _ in rows], [w for _, w in rows]
        if update == "merge":
            return merged_documents(self.model, params[0], weights=weights[0])
        # One set for the batch when there is one row (the kernel's plain path), else one set per row.
        if len(params) == 1:
            return use_documents(self.model, params[0], weights=weights[0])
        return use_documents(self.model, params, weights=weights)

    @torch.inference_mode()
    def _generate(self, prompts):
        """Greedy continuation of each prompt, batched with left padding."""
        pad = self.tokenizer.pad_token_id
        ids, mask = left_pad(prompts, pad)
        width = ids.shape[1]
        device = self.model.device
        out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                  max_new_tokens=self.max_new_tokens, do_sample=False,
                                  stopping_criteria=StoppingCriteriaList([_AnswerComplete(self.tokenizer, width)]),
                                  pad_token_id=pad, eos_token_id=self.tokenizer.eos_token_id)
        return self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)


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

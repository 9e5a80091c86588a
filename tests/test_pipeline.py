"""The Retrieve-Update-Generate pipeline on a tiny random model: modes, update methods, batching, errors."""

import string
import threading
from dataclasses import replace

import pytest
import torch
from tiny import random_doc_params, tiny_llama, tiny_tokenizer

from prag_core.answer.config import MODES, AnswerConfig
from prag_core.answer.knowledge_base import KnowledgeBase
from prag_core.answer.pipeline import Pipeline, prompt_ids
from prag_core.answer.requests import (
    PipelineError,
    PromptTooLong,
    Request,
    UnknownDocument,
    answer_complete,
    cut_answer,
    settled_answer,
)
from prag_core.corpus import Document, text_sha256
from prag_core.model.pool import DocumentPool
from prag_core.prompts import ANSWER_PREFIX
from prag_core.retrieval.bm25 import BM25Index

TEXTS = {
    "bridge": "The Orlan Bridge crosses the river Tesk. The engineer Corin Vale designed it in 1903.",
    "toad": "The glowtoad lives in the marshes around Lake Ombrin and glows orange at night.",
    "mill": "Marta Quenby invented the threadmill in her workshop in Lorvick.",
    "lamp": "The Velmora lighthouse lamp shines green over the fog of Dresk.",
    "bell": "The bell of Harrow Abbey was cast from melted coins in the year 1420.",
}
pytestmark = pytest.mark.usefixtures("one_thread")
QUESTIONS = [
    "Who designed the Orlan Bridge?",
    "Where does the glowtoad live?",
    "Who invented the threadmill?",
    "What color is the lighthouse lamp?",
    "When was the bell cast?",
]


def ascii_only(model, tokenizer):
    """Let the random model write only lowercase letters, spaces, '.', '\\n' and end-of-turn, so decoded
    answers are plain text (different raw bytes cannot hide behind the same replacement character)."""
    allowed = set(string.ascii_lowercase + " .\n")
    model.generation_config.suppress_tokens = [
        i for i in range(len(tokenizer)) if i != tokenizer.eos_token_id and tokenizer.decode([i]) not in allowed
    ]
    return model


@pytest.fixture(scope="module")
def pipe():
    return make_pipe()


def make_pipe():
    """A pipeline over TEXTS on a tiny float64 model that writes plain letters, random pairs per document."""
    tokenizer = tiny_tokenizer()
    # float64: batched and unbatched (or fused and merged) runs round differently; in float64 the
    # differences stay far below the gaps between the random model's logits.
    model = ascii_only(tiny_llama(seed=1).double(), tokenizer)
    docs = [Document(i, t, None, text_sha256(t)) for i, t in TEXTS.items()]
    store = dict(zip(TEXTS, random_doc_params(model, n=len(TEXTS), seed=3, std=0.3)))
    return Pipeline(
        KnowledgeBase(model, tokenizer, BM25Index.build(docs), store, TEXTS), AnswerConfig(top_k=2, max_new_tokens=10)
    )


def predictions(answers):
    return [a.prediction for a in answers]


def test_cut_answer_at_first_newline_or_sentence_end():
    assert cut_answer(" Oswin Tarrow. He built it") == "Oswin Tarrow"
    assert cut_answer(" 3.5 metres. Or more") == "3.5 metres"
    assert cut_answer(" in 1847.") == "in 1847"
    assert cut_answer(" green\nThe lamp") == "green"
    assert cut_answer(" yes! And") == "yes"
    assert cut_answer(" no end") == "no end"
    assert cut_answer(": Maelport. The capital") == "Maelport"  # "The answer is: X" -> X
    assert cut_answer(": 2018. The year") == "2018"


def test_generation_stops_once_the_cut_is_known():
    rows = [" Vale. It", " 3.", " 3.5", " green\n", " no end"]
    assert [answer_complete(r) for r in rows] == [True, False, False, True, False]


@pytest.mark.parametrize("text", [" Vale. It", " 3.5 metres. Or", ": Maelport! x", "  green \n", " ok?!\tno", " é. x"])
def test_settled_answer_only_grows_into_the_answer(text):
    """What streaming sends: the settled answer of every prefix is a prefix of the next and of the answer."""
    settled = [settled_answer(text[:n]) for n in range(len(text) + 1)]
    assert settled[-1] == cut_answer(text)
    assert all(b.startswith(a) for a, b in zip(settled, settled[1:]))
    assert settled_answer(" 3.") == "3" and settled_answer(" ab \ufffd") == "ab"


def test_prompt_holds_passages_only_in_rag_modes(pipe):
    tok = pipe.kb.tokenizer
    with_passages = tok.decode(prompt_ids(tok, "Who designed it?", [TEXTS["bridge"], TEXTS["toad"]]))
    alone = tok.decode(prompt_ids(tok, "Who designed it?"))
    assert with_passages.endswith(ANSWER_PREFIX) and alone.endswith(ANSWER_PREFIX)
    assert TEXTS["bridge"] in with_passages and TEXTS["toad"] in with_passages
    assert "Corin" not in alone and "Who designed it?" in alone


def test_retrieval_and_documents_used_per_mode(pipe):
    expected = [[d for d, _ in pipe.kb.index.search(q, k=2)] for q in QUESTIONS]
    assert [e[0] for e in expected] == list(TEXTS)  # each question finds its own document first
    for mode in MODES:
        answers = pipe.answer(QUESTIONS, mode)
        assert [a.docs for a in answers] == ([[]] * len(QUESTIONS) if mode == "vanilla" else expected)
        assert all(a.mode == mode and a.latency_s > 0 for a in answers)


def test_documents_change_the_answers(pipe):
    vanilla, rag = predictions(pipe.answer(QUESTIONS, "vanilla")), predictions(pipe.answer(QUESTIONS, "rag"))
    prag, combine = predictions(pipe.answer(QUESTIONS, "prag")), predictions(pipe.answer(QUESTIONS, "combine"))
    assert prag != vanilla and combine != rag
    assert all(p.strip() == p and "\n" not in p for p in vanilla + rag + prag + combine)


@pytest.mark.parametrize("mode", ["prag", "combine"])
def test_fused_and_merge_give_the_same_answers(pipe, mode):
    weights = [p.detach().clone() for p in pipe.kb.model.parameters()]
    fused = predictions([pipe.answer([q], mode, "fused")[0] for q in QUESTIONS])
    merged = predictions(pipe.answer(QUESTIONS, mode, "merge"))  # merge answers one question at a time
    assert merged == fused
    assert all(torch.equal(w, p) for w, p in zip(weights, pipe.kb.model.parameters()))  # restored exactly


@pytest.mark.parametrize("mode", MODES)
def test_batched_answers_equal_batch_size_one(pipe, mode):
    batched = pipe.answer(QUESTIONS, mode)
    if mode != "vanilla":
        assert len({tuple(a.docs) for a in batched}) == len(QUESTIONS)  # every row has its own documents
    assert predictions(batched) == predictions([pipe.answer([q], mode)[0] for q in QUESTIONS])


@pytest.mark.parametrize("mode", ["prag", "combine"])
def test_pool_answers_equal_the_per_row_path(pipe, mode):
    """With a document pool (fixed slots, static KV cache) every row answers as on the per-row path; documents
    stay loaded for the next batch, and no row holds a slot after its batch."""
    per_row = pipe.answer(QUESTIONS, mode)
    pipe.pool = DocumentPool(pipe.kb.model, rank=2, alpha=16.0, slots=8, max_rows=len(QUESTIONS))
    try:
        pooled = pipe.answer(QUESTIONS, mode)
        loaded = dict(pipe.pool.slot_of)
        assert predictions(pipe.answer(QUESTIONS, mode)) == predictions(pooled) and pipe.pool.slot_of == loaded
    finally:
        pool, pipe.pool = pipe.pool, None
    assert predictions(pooled) == predictions(per_row) and [a.docs for a in pooled] == [a.docs for a in per_row]
    assert len(loaded) == len({d for a in per_row for d in a.docs}) and pool.users == [0] * 8
    assert not pool.row_weights.any()


def test_document_missing_from_the_store_is_named(pipe):
    store = {k: v for k, v in pipe.kb.store.items() if k != "toad"}
    partial = Pipeline(replace(pipe.kb, store=store), AnswerConfig(top_k=1))
    assert partial.answer([QUESTIONS[0]], "rag")[0].docs == ["bridge"]  # passages need no parameters
    with pytest.raises(PipelineError, match="'toad'.*not in the parameter store"):
        partial.answer([QUESTIONS[1]], "prag")


@pytest.mark.parametrize(
    "question, mode, update, message",
    [
        ("  ", "prag", "fused", "question: empty"),
        ("Who?", "magic", "fused", "mode: unknown 'magic'"),
        ("Who?", "prag", "lazy", "update: unknown 'lazy'"),
    ],
)
def test_bad_requests(pipe, question, mode, update, message):
    with pytest.raises(PipelineError, match=message):
        pipe.answer([question], mode, update)


def test_rows_with_their_own_options_share_a_batch(pipe):
    """Modes, top_k, explicit documents and answer lengths differ per row; batched, each equals its row alone,
    rows without pairs included."""
    requests = [
        Request(QUESTIONS[0], "prag"),
        Request(QUESTIONS[1], "vanilla", max_new_tokens=3),
        Request(QUESTIONS[2], "rag", top_k=1),
        Request(QUESTIONS[3], "combine", documents=["bell", "toad"]),
        Request(QUESTIONS[4], "prag", top_k=3, max_new_tokens=4),
    ]
    rows = [pipe.prepare(r) for r in requests]
    assert [len(r.docs) for r in rows] == [2, 0, 1, 2, 3] and rows[3].docs == ["bell", "toad"]
    assert rows[3].scores == [None, None]  # not ranked
    batched = pipe.run(rows)
    alone = [pipe.run([r])[0] for r in rows]
    assert [(a.prediction, a.tokens, a.finish) for a in batched] == [(a.prediction, a.tokens, a.finish) for a in alone]
    assert batched[1].tokens <= 3 and batched[4].tokens <= 4


def test_a_row_streams_its_answer_and_stops_when_cancelled(pipe):
    pieces, cancel = [], threading.Event()
    streamed = pipe.run([pipe.prepare(Request(q, "prag", on_text=pieces.append)) for q in QUESTIONS[:1]])[0]
    assert "".join(pieces) == streamed.prediction and len(pieces) >= 1
    pieces.clear()
    cancel.set()  # its client went away: the row stops at the next step, and receives nothing more
    rows = [
        pipe.prepare(Request(QUESTIONS[1], "prag", max_new_tokens=40, on_text=pieces.append, cancel=cancel)),
        pipe.prepare(Request(QUESTIONS[2], "prag")),
    ]
    gone, mate = pipe.run(rows)
    assert (gone.finish, gone.tokens, pieces) == ("cancelled", 1, [])
    assert mate.prediction == pipe.run([rows[1]])[0].prediction


def test_request_errors_name_their_field(pipe):
    with pytest.raises(UnknownDocument, match="documents: unknown document id 'nope'") as err:
        pipe.prepare(Request(QUESTIONS[0], documents=["toad", "nope"]))
    assert err.value.field == "documents"
    with pytest.raises(PipelineError, match="top_k") as err:
        pipe.prepare(Request(QUESTIONS[0], top_k=0))
    assert err.value.field == "top_k"
    with pytest.raises(PromptTooLong, match="the model's context of 512") as err:
        pipe.prepare(Request("why " * 200, "vanilla"))
    assert err.value.field == "question"

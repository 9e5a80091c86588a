"""Multi-hop Retrieve-Update-Generate (Pipeline.next_hop): a two-hop question whose second document only the bridge
retrieves is answered through it; single-fact questions take one hop at today's cost; the stopping rules; hops
shown by `prag ask --explain`, counted by eval; and in `prag serve`, rows at different hops share the running
batch and each answers as it does alone."""

import re
import threading
from dataclasses import replace

import pytest
from test_pipeline import QUESTIONS, make_pipe
from test_serve import chat, client, running, user
from tiny import random_doc_params, tiny_llama, tiny_tokenizer

from prag_core.answer.config import AnswerConfig, ServeConfig
from prag_core.answer.knowledge_base import KnowledgeBase
from prag_core.answer.pipeline import Pipeline
from prag_core.answer.requests import Request
from prag_core.answer.serve import create_app
from prag_core.corpus import Document, text_sha256
from prag_core.retrieval.bm25 import BM25Index

pytestmark = pytest.mark.usefixtures("one_thread")

SHIP = {
    "corraveen": "The SS Corraveen was a cargo steamer launched at Dunmore in 1889. Her original master was "
    "Captain Tobiah Wrenslow.",
    "wrenslow": "Tobiah Wrenslow was a sea captain from Pellmouth. Captain Wrenslow retired there, and Wrenslow "
    "published a memoir, The Salt Ledger.",
    "mill": "Marta Quenby invented the threadmill in her workshop in Lorvick.",
    "lamp": "The Velmora lighthouse lamp shines green over the fog of Dresk.",
    "bell": "The bell of Harrow Abbey was cast from melted coins in the year 1420.",
    "toad": "The glowtoad lives in the marshes around Lake Ombrin and glows orange at night.",
    "bridge": "The Orlan Bridge crosses the river Tesk. The engineer Corin Vale designed it in 1903.",
    "fair": "The Quill Fair of Sandrel sells paper, ink and pens every spring.",
}
TWO_HOPS = "Which book did the SS Corraveen's first master write?"
SINGLE = "In which year was the SS Corraveen launched?"


def knows(row):
    """A scripted model: it answers from the documents applied to the row (what the pairs would teach it)."""
    if "wrenslow" in row.docs and "Corraveen" in row.request.question and "book" in row.request.question:
        return "The Salt Ledger"
    if "corraveen" in row.docs:
        return "1889" if "year" in row.request.question else "Captain Tobiah Wrenslow"
    return "nobody"


@pytest.fixture
def ship():
    tokenizer = tiny_tokenizer()
    model = tiny_llama(seed=1).double()
    docs = [Document(i, t, None, text_sha256(t)) for i, t in SHIP.items()]
    store = dict(zip(SHIP, random_doc_params(model, n=len(SHIP), seed=3)))
    pipe = Pipeline(
        KnowledgeBase(model, tokenizer, BM25Index.build(docs), store, SHIP), AnswerConfig(top_k=1, max_hops=3)
    )
    calls = []

    def generate(rows):
        calls.append([r.docs for r in rows])
        return [(f" {knows(r)}.", 4, "stop") for r in rows]

    pipe._generate = generate
    return pipe, calls


def test_the_bridge_retrieves_the_second_document(ship):
    pipe, calls = ship
    assert pipe.retrieve(TWO_HOPS)[0] == ["corraveen"]  # the question alone never finds the memoir's document
    answer = pipe.answer([TWO_HOPS], "prag")[0]
    assert answer.prediction == "The Salt Ledger" and answer.docs == ["wrenslow"]
    assert [(h.docs, h.answer) for h in answer.hops] == [
        (["corraveen"], "Captain Tobiah Wrenslow"),
        (["wrenslow"], "The Salt Ledger"),
    ]
    # hop 3 retrieved with the question and both answers: wrenslow first again, so it stopped at 2
    assert calls == [[["corraveen"]], [["wrenslow"]]]
    assert answer.hops[1].weights == [1.0] and answer.hops[0].scores == pipe.retrieve(TWO_HOPS)[1]


def test_one_hop_is_todays_answer(ship):
    pipe, calls = ship
    pipe.config = replace(pipe.config, max_hops=1)
    assert pipe.answer([TWO_HOPS], "prag")[0].prediction == "Captain Tobiah Wrenslow" and len(calls) == 1


def test_a_single_fact_question_takes_one_hop(ship):
    pipe, calls = ship
    answer = pipe.answer([SINGLE], "combine")[0]
    assert (answer.prediction, len(answer.hops), calls) == ("1889", 1, [[["corraveen"]]])


def test_a_batch_mixing_hops_answers_each_row_as_alone(ship):
    pipe, calls = ship
    questions = [SINGLE, TWO_HOPS, "Who invented the threadmill?", TWO_HOPS]
    together = pipe.answer(questions, "prag")
    assert [len(a.hops) for a in together] == [1, 2, 1, 2]
    assert calls[1] == [["wrenslow"], ["wrenslow"]]  # the second hop of both two-hop rows, in one call
    alone = [pipe.answer([q], "prag")[0] for q in questions]
    assert [(a.prediction, a.docs) for a in together] == [(a.prediction, a.docs) for a in alone]


def test_stopping_rules(ship):
    pipe, calls = ship
    pipe._generate = lambda rows: [(" Captain Tobiah Wrenslow.", 4, "stop") for _ in rows]  # never changes
    pipe.config = replace(pipe.config, top_k=2)
    answer = pipe.answer([TWO_HOPS], "prag")[0]
    assert len(answer.hops) == 2  # hop 2 brought a new document, gave the same answer: no third hop
    assert len(pipe.answer([TWO_HOPS], "vanilla")[0].hops) == 1  # no documents, no hops
    named = pipe.run([pipe.prepare(Request(TWO_HOPS, "prag", documents=["corraveen"]))])[0]
    assert len(named.hops) == 1  # the request chose its documents


def test_ask_explain_shows_each_hop(capsys, ship, monkeypatch):
    from prag_core import commands
    from prag_core.cli import build_parser

    pipe, _ = ship
    monkeypatch.setattr(Pipeline, "open", lambda workdir, config: pipe)
    commands.cmd_ask(build_parser().parse_args(["ask", "--workdir", "W", "--explain", "--max-hops", "3", TWO_HOPS]))
    out = capsys.readouterr().out
    assert out.startswith("The Salt Ledger\ndocuments: wrenslow\nhop 1: 'Captain Tobiah Wrenslow'\n  corraveen  score ")
    assert "hop 2: 'The Salt Ledger'\n  wrenslow  score " in out and ", weight 1.000" in out


class BridgeIndex:
    """BM25 for the questions themselves; any other query (a question and its answers) gets a document of its
    own, so with a real model every pair-mode question takes a second hop."""

    def __init__(self, index, questions):
        self.index, self.questions = index, set(questions)
        self.name, self.score_scale = index.name, index.score_scale

    def search(self, query, k=3):
        if query in self.questions:
            return self.index.search(query, k)
        ids = list(self.index.ids)
        return [(ids[len(query) % len(ids)], 1.0)]


def test_serve_rows_at_different_hops_share_the_batch(caplog):
    import logging

    pipe = make_pipe()
    pipe.kb.index, pipe.config = BridgeIndex(pipe.kb.index, QUESTIONS), replace(pipe.config, max_hops=2)
    pipe._about = lambda doc_id, text: True  # the random model's answers name no document's subject
    expected = {(q, m): pipe.answer([q], m)[0] for q in QUESTIONS for m in ("vanilla", "prag", "combine")}
    assert {len(a.hops) for a in expected.values()} == {1, 2}
    caplog.set_level(logging.INFO, logger="prag.serve")
    app = create_app(pipe, ServeConfig(served_model_names=("tiny",), max_batch=4, window_ms=10))
    results = {}
    with running(app) as url:
        c = client(url)

        def ask(q, m, stream):
            results[(q, m, stream)] = chat(c, q, stream, mode=m)

        threads = [
            threading.Thread(target=ask, args=(q, m, i % 2 == 1)) for i, (q, m) in enumerate(expected) for _ in (0,)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        reply = c.chat.completions.create(model="tiny", messages=user(QUESTIONS[0]))
    for (q, m, stream), (content, finish, prag, _) in results.items():
        assert (content, finish) == (expected[(q, m)].prediction, expected[(q, m)].finish), (q, m, stream)
    hops = reply.model_extra["prag"]["hops"]
    assert [h["answer"] for h in hops] == [h.answer for h in expected[(QUESTIONS[0], "prag")].hops]
    done = [re.search(r"(\d+) hops, .* (\d+) running", r.getMessage()) for r in caplog.records]
    assert {int(m[1]) for m in done if m} == {1, 2}


def test_a_hop_goes_only_to_a_document_about_the_answer(ship):
    """The answer's best document must name it among its first words: a bridge (a person with a document of their
    own) is followed; a year, or a name in the document already used, is not."""
    pipe, _ = ship
    assert pipe._about("wrenslow", "Captain Tobiah Wrenslow") and not pipe._about("corraveen", "Tobiah Wrenslow")
    assert pipe._about("bell", "Harrow Abbey") and not pipe._about("bell", "1420")  # the year is not in its opening
    pipe.kb.documents_text = {**pipe.kb.documents_text, "wrenslow": "A memoir, The Salt Ledger: " + SHIP["wrenslow"]}
    assert len(pipe.answer([TWO_HOPS], "prag")[0].hops) == 1  # its document no longer opens with his name

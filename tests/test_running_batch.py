"""Continuous batching (answer/running_batch.py) on the tiny float64 pipeline: rows that join a running batch between
decode steps, and leave as they finish, answer as they do alone (Pipeline.run), on the per-row path and through
the document pool; the cache stays as wide as its longest row; a cancelled row leaves at the next step; a cache
that cannot be padded (sliding-window layers) takes new rows only when empty."""

import threading
from dataclasses import replace

import pytest
from test_pipeline import QUESTIONS, make_pipe
from test_serve import request_specs

from prag_core.answer.config import AnswerConfig
from prag_core.answer.requests import Request
from prag_core.answer.running_batch import RunningBatch
from prag_core.model.pool import DocumentPool

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    return make_pipe()


def request(spec):
    spec = dict(spec)
    return Request(
        spec.pop("question"), spec.get("mode", "prag"), spec.get("top_k"), spec.get("documents"), spec.get("max_tokens")
    )


def run_joining(batch, pipe, specs, per_join):
    """Answers by spec index: `per_join` new rows join before every step; also the (width, longest row) seen."""
    answers, index, widths = {}, {}, []
    pending = list(enumerate(specs))
    while pending or len(batch):
        if pending and batch.can_join():
            take, pending = pending[:per_join], pending[per_join:]
            rows = [pipe.prepare(request(s)) for _, s in take]
            index.update((id(r), i) for (i, _), r in zip(take, rows))
            answers.update((index[id(r)], a) for r, a in batch.join(rows))
        answers.update((index[id(r)], a) for r, a in batch.step())
        if len(batch):
            longest = max(len(r.row.prompt) + len(r.ids) for r in batch.rows)
            widths.append((batch.mask.shape[1], longest, batch.cache.get_seq_length()))
    return answers, widths


def alone(pipe, spec):
    return pipe.run([pipe.prepare(request(spec))])[0]


def same(a, b):
    return (a.prediction, a.finish, a.tokens, a.docs, a.scores) == (b.prediction, b.finish, b.tokens, b.docs, b.scores)


@pytest.mark.parametrize("per_join", [1, 3, 32])
def test_rows_joining_between_steps_answer_as_alone(pipe, per_join):
    specs = request_specs()  # 32 rows: every mode, top_k, explicit documents, answer lengths
    answers, widths = run_joining(RunningBatch(pipe), pipe, specs, per_join)
    assert sorted(answers) == list(range(32))
    wrong = [i for i, s in enumerate(specs) if not same(answers[i], alone(pipe, s))]
    assert not wrong, [(i, answers[i].prediction, alone(pipe, specs[i]).prediction) for i in wrong]
    # the cache is trimmed as rows leave: never wider than the longest row in it (its pending token not yet in)
    assert all(width == cached == longest - 1 for width, longest, cached in widths), widths


def test_rows_through_the_document_pool_answer_as_alone(pipe):
    specs = [s for s in request_specs() if s["mode"] in ("prag", "combine")]
    pipe.pool = DocumentPool(pipe.kb.model, rank=2, alpha=16.0, slots=8, max_rows=16)
    try:
        answers, _ = run_joining(RunningBatch(pipe), pipe, specs, 3)
        assert pipe.pool.users == [0] * 8 and pipe.pool.slot_of  # loaded once, released when the rows left
    finally:
        pipe.pool = None
    assert all(same(answers[i], alone(pipe, s)) for i, s in enumerate(specs))


def test_a_cancelled_row_leaves_at_the_next_step(pipe):
    batch = RunningBatch(pipe)
    longest = sorted(QUESTIONS, key=lambda q: -pipe.answer([q])[0].tokens)[:2]  # both run past 2 tokens
    cancel = threading.Event()
    rows = [pipe.prepare(Request(q, "prag", cancel=e)) for q, e in zip(longest, (cancel, None))]
    assert batch.join(rows) == [] and batch.step() == []
    cancel.set()
    finished = batch.step()
    assert [(r is rows[0], a.finish, a.tokens) for r, a in finished] == [(True, "cancelled", 3)]
    assert [r.row for r in batch.rows] == [rows[1]]


def test_a_row_finished_by_its_first_token_does_not_join(pipe):
    batch = RunningBatch(pipe)
    longest = sorted(QUESTIONS, key=lambda q: -pipe.answer([q])[0].tokens)[:2]
    rows = [pipe.prepare(Request(q, "prag", max_new_tokens=m)) for q, m in zip(longest, (1, 4))]
    finished = batch.join(rows)
    assert [(r is rows[0], a.finish, a.tokens) for r, a in finished] == [(True, "length", 1)]
    assert len(batch) == 1 and batch.cache.get_seq_length() == len(rows[1].prompt)
    assert batch.mask.shape == (1, len(rows[1].prompt))


def test_a_sliding_window_cache_takes_rows_only_when_empty(pipe):
    from tiny import tiny_model

    from prag_core.answer.pipeline import Pipeline

    model = tiny_model("gemma2").double()
    assert model.config.sliding_window
    slides = Pipeline(replace(pipe.kb, model=model, store={}), AnswerConfig(top_k=2, max_new_tokens=6))
    batch = RunningBatch(slides)
    specs = [{"question": q, "mode": m} for q in QUESTIONS[:3] for m in ("vanilla", "rag")]
    rows = [slides.prepare(request(s)) for s in specs]
    batch.join(rows[:2])
    assert not batch.continuous and not batch.can_join()
    while len(batch):
        batch.step()
    assert batch.can_join()
    # one row at a time: left-padded prefill with sliding windows rounds as HF's batched generate does, not alone
    answers, _ = run_joining(batch, slides, specs, 1)
    assert all(same(answers[i], alone(slides, s)) for i, s in enumerate(specs))

"""The evaluation loop: batching, scores per question and per mode, the results.json format, the table."""

import json
from types import SimpleNamespace

import pytest

from prag_core.answer.evaluate import evaluate, table, write_results
from prag_core.answer.requests import Answer
from prag_core.corpus import Question

QUESTIONS = [
    Question("q1", "Who built it?", ["Oswin Tarrow", "Tarrow"], docs=("d0", "d9")),
    Question("q2", "When?", ["1847"], docs=("d1",)),
    Question("q3", "What color?", ["green"]),
]
# mode -> prediction per question, and the scores they must get (hand-computed, SQuAD normalisation)
PREDICTIONS = {"vanilla": ["Alessandro", "2018", "a deep green light"], "prag": ["tarrow", "1847", "The green"]}
EXPECTED = {
    "vanilla": {"em": 0.0, "f1": (0 + 0 + 2 * (1 / 3) * 1 / (1 / 3 + 1)) / 3, "acc": 1 / 3},
    "prag": {"em": 1.0, "f1": 1.0, "acc": 1.0},
}


class Scripted:
    """A pipeline double that answers from PREDICTIONS and records the batches it was given."""

    def __init__(self):
        self.calls = []
        texts = {"d0": "Oswin Tarrow built the tower.", "d1": "It opened in 1847.", "d2": "Its lamp is red."}
        self.kb = SimpleNamespace(documents_text=texts)

    def answer(self, questions, mode, update):
        self.calls.append((mode, update, len(questions)))
        row = {q.question: i for i, q in enumerate(QUESTIONS)}
        return [Answer(q, mode, PREDICTIONS[mode][row[q]], ["d" + str(row[q])], 0.5 * (row[q] + 1)) for q in questions]


def test_scores_per_question_and_per_mode():
    pipe = Scripted()
    results = evaluate(pipe, QUESTIONS, modes=["vanilla", "prag"], update="merge", batch_size=2, progress=False)
    assert pipe.calls == [("vanilla", "merge", 2), ("vanilla", "merge", 1), ("prag", "merge", 2), ("prag", "merge", 1)]
    assert set(results) == {"complete", "modes", "questions"} and results["complete"] is True
    for mode, expected in EXPECTED.items():
        summary = results["modes"][mode]
        assert set(summary) == {"em", "f1", "acc", "latency_s", "ungrounded", "recall", "n", "hops"}
        assert summary["n"] == 3 and summary["latency_s"] == pytest.approx(1.0)
        for key, value in expected.items():
            assert summary[key] == pytest.approx(value), (mode, key)
    rows = results["questions"]
    assert [(r["id"], r["mode"]) for r in rows] == [(q.id, m) for m in ("vanilla", "prag") for q in QUESTIONS]
    assert all(
        set(r)
        == {"id", "mode", "prediction", "em", "f1", "acc", "docs", "latency_s", "ungrounded", "recall", "hops", "type"}
        for r in rows
    )
    assert rows[3] == {
        "id": "q1",
        "mode": "prag",
        "prediction": "tarrow",
        "em": 1.0,
        "f1": 1.0,
        "acc": 1.0,
        "docs": ["d0"],
        "latency_s": 0.5,
        "ungrounded": 0.0,
        "recall": 0.5,
        "hops": 1,
        "type": None,
    }
    # recall@k: q1 retrieved 1 of its 2 supporting documents, q2 its one, q3 lists none; vanilla retrieves nothing
    assert [r["recall"] for r in rows] == [None, None, None, 0.5, 1.0, None]
    assert results["modes"]["prag"]["recall"] == pytest.approx(0.75) and results["modes"]["vanilla"]["recall"] is None
    # ungrounded: "Alessandro" and "2018" share no word with the question or the passages; "The green" does not
    # occur in d2 ("red") nor in "What color?", so it is flagged too; "a deep green light" neither
    assert [r["ungrounded"] for r in rows] == [1.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    assert results["modes"]["prag"]["ungrounded"] == pytest.approx(1 / 3)


def test_results_file_round_trips_and_the_table_lists_every_mode(tmp_path):
    results = evaluate(Scripted(), QUESTIONS, modes=["prag", "vanilla"], progress=False)
    write_results(tmp_path / "out" / "results.json", results)
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == results
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["results.json"]  # no temp file left
    lines = table(results["modes"]).splitlines()
    assert lines[0].split() == ["mode", "EM", "F1", "acc", "latency/q", "n", "recall@k"]
    assert lines[1].split() == ["prag", "1.000", "1.000", "1.000", "1.000s", "3", "0.750"]
    assert lines[2].split()[0] == "vanilla" and lines[2].split()[2] == f"{EXPECTED['vanilla']['f1']:.3f}"
    assert lines[2].split()[-1] == "-"  # vanilla retrieves nothing: no recall


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        evaluate(Scripted(), QUESTIONS, batch_size=0, progress=False)


def test_f1_and_hops_per_question_type():
    """Questions that carry a `type` get F1, EM and mean hops per type in results.json and the printed table."""
    import dataclasses

    from prag_core.answer.evaluate import table

    typed = [dataclasses.replace(q, type=t) for q, t in zip(QUESTIONS, ("single", "multihop", "single"))]
    results = evaluate(Scripted(), typed, modes=["vanilla", "prag"], progress=False)
    prag = [r for r in results["questions"] if r["mode"] == "prag"]
    by_type = results["modes"]["prag"]["by_type"]
    assert set(by_type) == {"single", "multihop"} and by_type["multihop"]["n"] == 1 and by_type["single"]["n"] == 2
    assert by_type["multihop"]["f1"] == pytest.approx(prag[1]["f1"])
    assert by_type["single"]["f1"] == pytest.approx((prag[0]["f1"] + prag[2]["f1"]) / 2)
    assert by_type["single"]["hops"] == 1.0 and results["modes"]["prag"]["hops"] == 1.0
    header, *lines = table(results["modes"]).splitlines()
    assert "F1 multihop" in header and "F1 single" in header and f"{by_type['multihop']['f1']:.3f}" in lines[1]

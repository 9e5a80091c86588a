"""`prag demo`'s flow on a tiny model and a small corpus: build, the three sections, reuse on the second run."""

import json

import pytest
from test_cli import DOCS, QA, save_tiny, write

from prag_core import demo
from prag_core.answer.config import MODES
from prag_core.corpus import read_questions
from prag_core.offline.train_config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = dict(config=TrainConfig(epochs=1), augmenter="fallback", batch_docs=4)


def test_demo_builds_prints_three_sections_and_reuses_the_build(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo, "LATENCY_QUESTIONS", 2)
    corpus = write(tmp_path / "corpus.jsonl", "".join(json.dumps(d) + "\n" for d in DOCS))
    qa = write(tmp_path / "qa.jsonl", "".join(json.dumps(q) + "\n" for q in QA))
    model, work = save_tiny(tmp_path / "model", seed=0), tmp_path / "W"
    runs = []
    for _ in range(2):
        results = demo.run(work, model=str(model), device="cpu", corpus=corpus, questions=qa, **FAST)
        runs.append(
            (capsys.readouterr().out, {p.name: p.stat().st_mtime_ns for p in (work / "store").glob("*.safetensors")})
        )
    (first, store_first), (second, store_second) = runs
    assert "built 4 documents (4 encoded now, 0 already in the store" in first
    assert "built 4 documents (0 encoded now, 4 already in the store" in second
    assert store_second == store_first  # nothing re-trained or rewritten

    sections = second.split("\n(")
    assert [s[:2] for s in sections[1:]] == ["1)", "2)", "3)"]
    examples, scores, latency = sections[1:]
    shown = demo.spread(read_questions(qa), demo.EXAMPLES)
    assert [q.question for q in shown] == [QA[0]["question"], QA[3]["question"]]
    blocks = examples.strip().split("\n\n")[1:]  # after the section title: one block per question
    assert [block.splitlines()[0].split(None, 1) for block in blocks] == [
        ["1", QA[0]["question"]],
        ["2", QA[3]["question"]],
    ]
    prediction = {(r["id"], r["mode"]): r["prediction"] for r in results["questions"]}
    for block, q in zip(blocks, ("q1", "q4")):
        rows = [line.split(None, 1) for line in block.splitlines()[1:]]
        assert [r[0] for r in rows] == ["gold", *MODES]
        # every answer whole, never cut (a random model's answers run to the token limit)
        assert [r[1] if len(r) > 1 else "" for r in rows[1:]] == [
            " ".join(prediction[q, m].split()) or "(empty)" for m in MODES
        ]
    assert [line.split()[0] for line in scores.splitlines()[-4:]] == list(MODES)
    assert len([line for line in latency.splitlines() if line.startswith(("q1 ", "q4 "))]) == 2
    assert "mean" in latency and "per-row documents" in latency
    assert json.loads((work / "demo_results.json").read_text()) == results
    assert {r["mode"] for r in results["questions"]} == set(MODES) and len(results["questions"]) == 4 * len(QA)

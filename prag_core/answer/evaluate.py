"""Evaluation: answer a question set in several modes, score it, write results.json (docs/design.md, Results).

results.json:
    {"complete": bool,
     "modes": {MODE: {"em", "f1", "acc", "latency_s", "ungrounded", "recall", "n", "hops",
                      "by_type"?: {TYPE: {"f1", "em", "hops", "n"}}}},
     "questions": [{"id", "mode", "prediction", "em", "f1", "acc", "docs", "latency_s", "ungrounded",
                    "recall", "hops", "type"}, ...],
     "retrieval": {"retriever", "recall@1", "recall@3", "recall@5"}}     (when questions list their `docs`)

A mode's em / f1 / acc / latency_s are means over its questions; a question's
latency_s is its share of its batch's wall time (batch time / batch size), so
batched modes show the per-question cost of batched serving. ungrounded: the
answer has no word of the question or the retrieved passages (metrics.ungrounded;
the mode's value is the share of such answers). recall: for a question whose file
lists its supporting `docs`, the share of them among the retrieved documents
(recall@k; a passage doc#3 counts for doc); null for vanilla or without `docs`, and the mode's value is the mean
over the questions that have one (null if none). retrieval: the same recall of the pipeline's retriever
alone at depths 1, 3 and 5, whatever top_k (`prag eval --retriever` compares retrievers). hops: the
Retrieve-Update-Generate rounds a question took (its mean per mode); by_type: F1, EM and hops per question
`type` (single, multihop, comparison in bench/data) when the questions carry one.

`prag eval` checks that --out can be written before the model loads (and is no input, nothing inside a work
directory, no link or device: storage.workdir.check_output), and rewrites
it as answers come (every SAVE_EVERY_S seconds, and on Ctrl-C or an error), with
"complete": false until every question is answered, so a stopped run keeps its answers.
"""

import json
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from prag_core.answer.config import MODES, AnswerConfig
from prag_core.answer.requests import PipelineError
from prag_core.corpus import source_of
from prag_core.files import write_text_atomic
from prag_core.metrics import scores, ungrounded
from prag_core.storage.workdir import check_output

METRICS = ("em", "f1", "acc", "latency_s", "ungrounded")
SAVE_EVERY_S = 10.0
RECALL_AT = (1, 3, 5)


def retrieval_recall(index, questions, depths=RECALL_AT):
    """{"recall@k": mean share of a question's `docs` among the index's top k} over the questions that list
    docs, for each k of `depths`; None when none does."""
    listed = [q for q in questions if q.docs]
    if not listed:
        return None
    top = [[doc_id for doc_id, _ in index.search(q.question, max(depths))] for q in listed]
    return {f"recall@{k}": sum(_recall(hits[:k], q.docs) for q, hits in zip(listed, top)) / len(listed) for k in depths}


def _recall(retrieved, docs):
    """The share of `docs` that a retrieved id is, or is a passage of (doc#3)."""
    return sum(any(source_of(r, d) for r in retrieved) for d in docs) / len(docs)


def evaluate(pipeline, questions, modes=MODES, update="fused", batch_size=1, progress=True):
    """Answer `questions` (corpus.Question list) in every mode; returns the results.json dict."""
    rows = [row for batch in answer_rows(pipeline, questions, modes, update, batch_size, progress) for row in batch]
    return {"complete": True, "modes": summarize(rows, modes), "questions": rows}


def answer_rows(pipeline, questions, modes=MODES, update="fused", batch_size=1, progress=True):
    """Yield the scored rows of each batch of questions, mode after mode."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    with tqdm(total=len(modes) * len(questions), unit="q", disable=not progress) as bar:
        for mode in modes:
            bar.set_description(mode)
            for start in range(0, len(questions), batch_size):
                batch = questions[start : start + batch_size]
                answers = pipeline.answer([q.question for q in batch], mode, update)
                rows = []
                for q, a in zip(batch, answers):
                    sources = [q.question] + [pipeline.kb.documents_text.get(d, "") for d in a.docs]
                    recall = _recall(a.docs, q.docs) if q.docs and mode != "vanilla" else None
                    rows.append(
                        {
                            "id": q.id,
                            "mode": mode,
                            "prediction": a.prediction,
                            **scores(a.prediction, q.answers),
                            "docs": a.docs,
                            "latency_s": a.latency_s,
                            "ungrounded": float(ungrounded(a.prediction, sources)),
                            "recall": recall,
                            "hops": len(a.hops) or 1,
                            "type": q.type,
                        }
                    )
                yield rows
                bar.update(len(batch))


def summarize(rows, modes):
    """Per mode: the mean of every metric over its rows, and their count."""
    summary = {}
    for mode in modes:
        mine = [r for r in rows if r["mode"] == mode]
        summary[mode] = {k: sum(r[k] for r in mine) / len(mine) if mine else 0.0 for k in METRICS}
        recalls = [r["recall"] for r in mine if r.get("recall") is not None]
        summary[mode]["recall"] = sum(recalls) / len(recalls) if recalls else None
        summary[mode]["n"] = len(mine)
        summary[mode]["hops"] = sum(r.get("hops", 1) for r in mine) / len(mine) if mine else 0.0
        types = sorted({r["type"] for r in mine if r.get("type")})
        if types:
            summary[mode]["by_type"] = {
                t: {
                    "f1": sum(r["f1"] for r in mine if r.get("type") == t) / n,
                    "em": sum(r["em"] for r in mine if r.get("type") == t) / n,
                    "hops": sum(r.get("hops", 1) for r in mine if r.get("type") == t) / n,
                    "n": n,
                }
                for t in types
                if (n := sum(r.get("type") == t for r in mine))
            }
    return summary


def table(summary):
    """The per-mode table printed on stdout (mean hops when a question took more than one; F1 per question type
    when the questions carry one)."""
    with_recall = any(s.get("recall") is not None for s in summary.values())
    with_hops = any(s.get("hops", 1) > 1 for s in summary.values())
    types = sorted({t for s in summary.values() for t in s.get("by_type", {})})
    lines = [
        f"{'mode':<9} {'EM':>6} {'F1':>6} {'acc':>6} {'latency/q':>10} {'n':>4}"
        + ("  recall@k" if with_recall else "")
        + ("   hops" if with_hops else "")
        + "".join(f" {'F1 ' + t:>14}" for t in types)
    ]
    for mode, s in summary.items():
        recall = "" if not with_recall else f"  {s['recall']:>8.3f}" if s.get("recall") is not None else f"  {'-':>8}"
        hops = f"  {s['hops']:>5.2f}" if with_hops else ""
        by_type = "".join(
            f" {s['by_type'][t]['f1']:>14.3f}" if t in s.get("by_type", {}) else f" {'-':>14}" for t in types
        )
        lines.append(
            f"{mode:<9} {s['em']:>6.3f} {s['f1']:>6.3f} {s['acc']:>6.3f} {s['latency_s']:>9.3f}s {s['n']:>4}{recall}"
            + hops
            + by_type
        )
    return "\n".join(lines)


def write_results(path, results):
    """results.json, written atomically."""
    write_text_atomic(path, json.dumps(results, indent=1, ensure_ascii=False) + "\n")


def run(workdir, questions_path, answering=AnswerConfig(), modes=MODES, update="fused", batch_size=1, out=None):
    """`prag eval`: check the inputs, answer every question in every mode (answering: pipeline.AnswerConfig),
    print the table, write results to `out` (a results.json path, or None)."""
    from prag_core.answer.pipeline import Pipeline
    from prag_core.answer.requests import check_request
    from prag_core.corpus import read_questions

    if not modes:
        raise PipelineError(f"--modes: no mode given; choose from {', '.join(MODES)}", field="mode")
    for mode in modes:
        check_request(mode=mode, update=update, combination=answering.combination, temperature=answering.temperature)
    if out is not None:  # never over the questions, inside a work directory, or through a link or device
        check_output(out, "--out", [("--questions", questions_path)])
    questions = read_questions(questions_path)  # before the model loads: a bad line fails fast

    def save(rows, complete, retrieval=None):
        results = {
            "complete": complete,
            "modes": summarize(rows, modes),
            "questions": rows,
            **({"retrieval": retrieval} if retrieval else {}),
        }
        if out is not None:
            write_results(out, results)
        return results

    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        save([], False)  # fails now, not after the run, if --out cannot be written
    pipeline = Pipeline.open(workdir, answering)
    rows, saved = [], time.monotonic()
    try:
        for batch in answer_rows(pipeline, questions, modes, update, batch_size):
            rows += batch
            if time.monotonic() - saved > SAVE_EVERY_S:
                save(rows, False)
                saved = time.monotonic()
    except BaseException:
        if out is not None and rows:
            save(rows, False)
            print(f"prag: kept the {len(rows)} answers so far in {out}", file=sys.stderr)
        raise
    recall = retrieval_recall(pipeline.kb.index, questions)
    results = save(rows, True, {"retriever": pipeline.kb.index.name, **recall} if recall is not None else None)
    print(table(results["modes"]))
    if recall is not None:
        print(f"retrieval ({pipeline.kb.index.name}): " + "  ".join(f"{k} {v:.3f}" for k, v in recall.items()))
    if out is not None:
        print(f"wrote {out}")
    return results

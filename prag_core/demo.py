"""`prag demo`, the main job: the shipped fictional corpus, end to end, on the embedded SmolLM2.

1. Build the demo corpus (corpus.DEMO_CORPUS) into a work directory, $PRAG_CACHE/demo
   by default, through the build module: index, augmentation, one LoRA pair set per
   document. Build resumes, so a finished work directory is reused as it is.
2. Answer every demo question (corpus.DEMO_QUESTIONS) in the four modes, fused,
   BATCH_SIZE questions per generate call, and print
   (1) a few questions with every mode's answer side by side,
   (2) EM / F1 / acc / latency per mode (results in <workdir>/demo_results.json),
   (3) the per-question latency of `prag` with the pairs applied by the fused kernel
       versus merged into the weights (both one question at a time, after a warm-up).
The documents are fictional, so `vanilla` cannot know the answers; what `prag`
gets right comes from the documents' parameters.
"""

import time
from pathlib import Path

import torch

from prag_core.answer.config import MODES, AnswerConfig
from prag_core.answer.evaluate import evaluate, table, write_results
from prag_core.answer.pipeline import Pipeline
from prag_core.corpus import DEMO_CORPUS, DEMO_QUESTIONS, read_questions
from prag_core.model.load import cache_dir
from prag_core.offline.train_config import TrainConfig
from prag_core.storage.workdir import Workdir

BATCH_SIZE = 8
EXAMPLES = 5  # questions shown side by side
LATENCY_QUESTIONS = 10  # questions timed fused vs merge


def spread(questions, n):
    """n questions about different documents: every third question of the demo set (3 per document)."""
    return questions[::3][:n]


def _cell(text, width):
    """`text` on one line (any whitespace run, line breaks included, becomes a space), cut to `width`."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def examples(results, questions, n=EXAMPLES):
    """(1): each chosen question, then the gold answer and every mode's whole prediction, one per line."""
    prediction = {(r["id"], r["mode"]): r["prediction"] for r in results["questions"]}
    lines = []
    for i, q in enumerate(spread(questions, n), 1):
        lines.append(f"{i:>2}  {q.question}")
        for label, text in [("gold", q.answers[0])] + [(m, prediction[q.id, m]) for m in MODES]:
            lines.append(f"    {label:<8} {' '.join(text.split()) or '(empty)'}")
        lines.append("")
    return "\n".join(lines[:-1])


def latency(pipeline, questions, batched_s, n=LATENCY_QUESTIONS):
    """(3): seconds per question for prag, fused vs merge, one question at a time; and batched fused."""
    timed = spread(questions, n)
    for update in ("fused", "merge"):  # warm-up: first-call costs (allocation, document loading) are not per question
        pipeline.answer([timed[0].question], "prag", update)
    lines = [f"{'question':<24} {'fused':>8} {'merge':>8}  same answer"]
    fused_total = merge_total = same = 0
    for q in timed:
        fused = pipeline.answer([q.question], "prag", "fused")[0]
        merged = pipeline.answer([q.question], "prag", "merge")[0]
        fused_total += fused.latency_s
        merge_total += merged.latency_s
        same += fused.prediction == merged.prediction
        lines.append(
            f"{_cell(q.id, 24):<24} {fused.latency_s:>7.3f}s {merged.latency_s:>7.3f}s  "
            f"{'yes' if fused.prediction == merged.prediction else 'NO'}"
        )
    lines.append(
        f"{'mean':<24} {fused_total / len(timed):>7.3f}s {merge_total / len(timed):>7.3f}s  {same}/{len(timed)}"
    )
    lines.append(
        f"fused, {BATCH_SIZE} questions per generate call with per-row documents: {batched_s:.3f}s per question"
    )
    return "\n".join(lines)


def run(
    workdir=None,
    model=None,
    device=None,
    corpus=DEMO_CORPUS,
    questions=DEMO_QUESTIONS,
    config=TrainConfig(),
    **build_options,
):
    """Build (or reuse) the demo work directory, then print the three sections. config and build_options
    (offline.build.BuildConfig's fields) default to the CLI's (tests pass faster ones); serving uses the CLI's."""
    from prag_core.offline.build import BuildConfig, build

    start = time.perf_counter()
    workdir = Path(workdir) if workdir else cache_dir() / "demo"
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    print(f"prag demo: {Path(corpus).name} into {workdir}", flush=True)
    build_options.setdefault("retrain", True)  # prag's own cache: re-encode when prag's defaults change
    options = BuildConfig(model=model, device=device, **build_options)
    print(build(corpus, workdir, config, options), flush=True)
    built = time.perf_counter()
    pipeline = Pipeline.open(workdir, AnswerConfig(device=device))
    questions = read_questions(questions)
    results = evaluate(pipeline, questions, MODES, "fused", BATCH_SIZE)
    write_results(Workdir(workdir).demo_results, results)
    print(f"\n(1) Example answers, four modes side by side\n\n{examples(results, questions)}")
    print(f"\n(2) {len(questions)} questions, {BATCH_SIZE} per generate call, fused\n\n{table(results['modes'])}")
    print(
        f"\n(3) prag: latency per question, fused kernel vs merged weights\n\n"
        f"{latency(pipeline, questions, results['modes']['prag']['latency_s'])}"
    )
    print(
        f"\ntotal {time.perf_counter() - start:.1f}s (build {built - start:.1f}s); "
        f"results in {Workdir(workdir).demo_results}"
    )
    return results

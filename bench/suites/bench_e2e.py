"""Suite 3, end to end on the demo corpus, through prag_core.pipeline.Pipeline.answer.

    Full runs use the demo's work directory as it is ($PRAG_BENCH_WORKDIR, default $PRAG_CACHE/demo,
    what `prag demo` builds); where there is none, it is built first with the defaults (not timed).

    modes       one question at a time (retrieve top-k, update, generate until the answer's
                first sentence end, restore), each question in every mode: vanilla, rag, prag
                and combine (fused), and prag with merge; prompt and answer lengths recorded
    throughput  the same QUESTIONS answered `batch` at a time (1, 4, 16), each row with its own
                retrieved documents in one generate call (fused); merge answers one at a time

Variants run interleaved, round by round (common.interleave), so their ratios hold on a shared machine.
"""

import os
from functools import lru_cache
from pathlib import Path

from common import SMOKE, documents, interleave, tiny_llama, tiny_tokenizer

from prag_core.answer.config import MODES, AnswerConfig
from prag_core.answer.knowledge_base import KnowledgeBase
from prag_core.answer.pipeline import Pipeline, prompt_ids
from prag_core.corpus import DEMO_CORPUS, DEMO_QUESTIONS, read_corpus, read_questions
from prag_core.model.load import cache_dir
from prag_core.retrieval.bm25 import BM25Index
from prag_core.storage.workdir import Workdir

MODE_CASES = [(m, "fused") for m in MODES] + [("prag", "merge")]
PER_MODE = 1 if SMOKE else 8  # questions timed per mode (one round each), after one warm-up question
QUESTIONS = 4 if SMOKE else 16
BATCHES = (1, 4) if SMOKE else (1, 4, 16)
THROUGHPUT_CASES = [("fused", b) for b in BATCHES] + [("merge", 1)]


@lru_cache(maxsize=1)
def setting():
    """(model name, pipeline, question texts) over the demo corpus, built once."""
    corpus = read_corpus(DEMO_CORPUS)
    questions = [q.question for q in read_questions(DEMO_QUESTIONS)]
    if SMOKE:  # random pairs on a tiny model: exercises the code, measures nothing
        model = tiny_llama()
        model.config.max_position_embeddings = 4096  # byte-level prompts with 3 demo passages pass 512 (RoPE: no table)
        store = dict(zip((d.id for d in corpus), documents(model, len(corpus))))
        kb = KnowledgeBase(model, tiny_tokenizer(), BM25Index.build(corpus), store, {d.id: d.text for d in corpus})
        pipeline = Pipeline(kb, AnswerConfig(max_new_tokens=8))
        return "tiny random Llama", pipeline, questions
    # the demo's work directory as `prag demo` left it; built here first (not timed) if there is none
    workdir = Path(os.environ.get("PRAG_BENCH_WORKDIR") or cache_dir() / "demo")
    if not Workdir(workdir).config.is_file():
        from prag_core.offline.build import build

        build(DEMO_CORPUS, workdir)
    pipeline = Pipeline.open(workdir)
    for doc in corpus:  # read every document's pairs now, so no timing pays a first load from disk
        pipeline.kb.store[doc.id]
    name = Workdir(workdir).read_config().get("model") or "SmolLM2-135M"  # None: embedded
    return name, pipeline, questions


def describe(benchmark, kind):
    name, pipeline, _ = setting()
    benchmark.group = f"e2e {kind}"
    benchmark.extra_info.update(suite="e2e", kind=kind, model=name, top_k=pipeline.config.top_k)


def test_modes(benchmark):
    """Round k asks question k in every mode (interleaved); the first round warms up."""
    _, pipeline, questions = setting()
    asked = questions[::3][: PER_MODE + 1]  # about different documents
    tokenizer = pipeline.kb.tokenizer
    said = {f"{mode}-{update}": [] for mode, update in MODE_CASES}

    def variant(mode, update):
        passages = mode in ("rag", "combine")
        prompts = [
            len(
                prompt_ids(
                    tokenizer, q, [pipeline.kb.documents_text[d] for d in pipeline.retrieve(q)[0]] if passages else None
                )
            )
            for q in asked[1:]
        ]

        def ask(k):
            said[f"{mode}-{update}"].append(pipeline.answer([asked[k]], mode, update)[0].prediction)

        return {"mode": mode, "update": update, "prompt_tokens": sum(prompts) / len(prompts)}, ask

    describe(benchmark, "mode")
    interleave(benchmark, {f"{m}-{u}": variant(m, u) for m, u in MODE_CASES}, rounds=PER_MODE, warmup_rounds=1)
    for name, predictions in said.items():
        answers = predictions[1:]  # without the warm-up round
        benchmark.extra_info["variants"][name]["answer_tokens"] = sum(
            len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers
        ) / len(answers)


def test_throughput(benchmark):
    """The same QUESTIONS in batches of 1, 4, 16 (fused, per-row documents) and one at a time by merge."""
    _, pipeline, questions = setting()
    chosen = questions[:QUESTIONS]

    def variant(update, batch):
        def answer_all(_):
            for start in range(0, len(chosen), batch):
                pipeline.answer(chosen[start : start + batch], "prag", update)

        return {"update": update, "batch": batch, "questions": len(chosen)}, answer_all

    describe(benchmark, "throughput")
    # one round: each variant already answers QUESTIONS questions, and a round takes about a minute on 2 cores
    interleave(benchmark, {f"{u}-batch{b}": variant(u, b) for u, b in THROUGHPUT_CASES}, rounds=1)

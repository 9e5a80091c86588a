"""Multi-hop Retrieve-Update-Generate on the invented dev/test sets: one hop against each hop variant, per question
type, with latency per question (docs/decisions.md, Hops).

    prag build --corpus bench/data/dev_corpus.jsonl --workdir W          (every default)
    python bench/experiments/hops.py --workdir W --split dev [--variants all] [--modes rag,prag,combine]

A variant is a max_hops of Pipeline.next_hop's rule (the next hop's documents are the ones the answer
retrieves, and a question hops only to a document about its answer). The variants that lost on dev were run
with commit 234caaf's HOP_VARIANT switches, since removed; their rows stay in bench/results/hops.jsonl with
their `query` (answer; answers; question+answers: what the next hop retrieves with), `prompt` (question; bridge:
the answers appended in parentheses) and `rule` (top: any answer whose best document no round ranked first;
subject: the subject rule kept). Each (split, variant, mode) row goes to --out (JSON lines) as soon as it
is measured, and rows already there are skipped, so a stopped sweep resumes. The questions are answered in
batches of --batch-size (fused); latency_s is a question's share of its batches' wall time, hops its rounds.
"""

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from prag_core.answer.config import AnswerConfig
from prag_core.answer.evaluate import evaluate
from prag_core.answer.pipeline import Pipeline
from prag_core.corpus import read_questions

BENCH = Path(__file__).resolve().parents[1]
VARIANTS = {"one hop": 1, "2 hops: answer, subject rule": 2, "3 hops: answer, subject rule": 3}  # max_hops


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="built with every default from the split's corpus")
    parser.add_argument("--split", choices=("dev", "test"), required=True)
    parser.add_argument("--variants", default="all", help=f"names separated by ;, or all: {'; '.join(VARIANTS)}")
    parser.add_argument("--modes", default="rag,prag,combine")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "hops.jsonl")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = list(VARIANTS) if args.variants == "all" else [v.strip() for v in args.variants.split(";")]
    modes = [m.strip() for m in args.modes.split(",")]
    questions = read_questions(BENCH / "data" / f"{args.split}_qa.jsonl")
    done = set()
    if args.out.is_file():
        done = {(r["split"], r["variant"], r["mode"]) for r in map(json.loads, args.out.read_text().splitlines())}
    pipe = Pipeline.open(args.workdir, AnswerConfig(device="cpu"))
    for name in names:
        max_hops = VARIANTS[name]
        todo = [m for m in modes if (args.split, name, m) not in done]
        if not todo:
            continue
        pipe.config = replace(pipe.config, max_hops=max_hops)
        start = time.perf_counter()
        results = evaluate(pipe, questions, todo, batch_size=args.batch_size, progress=True)
        for mode in todo:
            summary = results["modes"][mode]
            row = {
                "split": args.split,
                "variant": name,
                "max_hops": max_hops,
                "query": "answer",
                "prompt": "question",
                "rule": "subject" if max_hops > 1 else None,
                "mode": mode,
                **{k: summary[k] for k in ("f1", "em", "hops", "latency_s", "n")},
                "by_type": summary.get("by_type"),
                "examples": [
                    {k: q[k] for k in ("id", "prediction", "f1", "hops", "type")}
                    for q in results["questions"]
                    if q["mode"] == mode and q["type"] == "multihop"
                ][:6],
                "wall_s": round(time.perf_counter() - start, 1),
                "batch_size": args.batch_size,
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}",
                "date": time.strftime("%Y-%m-%d"),
            }
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            by_type = " ".join(f"{t} {v['f1']:.3f}" for t, v in (row["by_type"] or {}).items())
            print(f"{args.split} {name} {mode}: F1 {row['f1']:.3f} ({by_type}) hops {row['hops']:.2f}", flush=True)


if __name__ == "__main__":
    main()

"""The sweep behind the defaults (docs/decisions.md), on the embedded SmolLM2.

Data: bench/data/{dev,test}_corpus.jsonl and {dev,test}_qa.jsonl, two invented knowledge bases with
single, multi-hop and comparison questions and clusters of confusable documents. Defaults are chosen
on dev; test is run only with the chosen ones and reported.

For every training configuration of --grid the split's documents are augmented (cached under --workdir)
and trained (their pairs kept in a store per configuration, so a stopped sweep resumes); then the
split's questions are answered through the pipeline (fused, greedy, batches of --batch-size):

    vanilla                       once per split
    rag                           at top-1 and top-k
    prag, combine                 at top-1, and at top-k for every combination scheme of --schemes

Each row (appended to --results as soon as it is measured; rows already there are skipped) holds EM,
F1, acc, `ungrounded` (share of answers with no word of the question or the retrieved passages: broken
language) and `recall` (recall@k of the supporting documents). Cost: `cpu_s_per_doc` is process CPU
time per trained document divided by 2, i.e. seconds per document on 2 busy cores.

    python bench/experiments/sweep.py --split dev --grid "init=shared; init=document" --schemes "sum,mean,score:1"
    python bench/experiments/sweep.py --eval-only --retriever hybrid ...   # the same stores, another retriever
    python bench/experiments/sweep.py --table            # markdown tables of every result so far
"""

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import torch

from prag_core.answer.config import AnswerConfig
from prag_core.answer.evaluate import evaluate
from prag_core.answer.knowledge_base import KnowledgeBase
from prag_core.answer.pipeline import Pipeline
from prag_core.corpus import read_corpus, read_questions
from prag_core.model.load import cache_dir, load_model
from prag_core.offline.augment import LMGenerator, augment_documents
from prag_core.offline.encode import encode
from prag_core.offline.train_config import TrainConfig
from prag_core.offline.warmup import WARMUP_CORPUS, warmup_pair
from prag_core.pairs.choices import SCHEMES
from prag_core.pairs.doc_params import model_fingerprint
from prag_core.retrieval.bm25 import BM25Index
from prag_core.retrieval.dense import DenseIndex, load_embedder
from prag_core.retrieval.retrievers import RETRIEVERS, HybridIndex
from prag_core.storage.store import Store

BENCH = Path(__file__).resolve().parents[1]
DATA = BENCH / "data"
RESULTS = BENCH / "results" / "sweep.jsonl"
TRAIN_FIELDS = {
    "rank": int,
    "epochs": int,
    "lr": float,
    "alpha": float,
    "construction": str,
    "init": str,
    "objective": str,
}
DEFAULT_LABEL = {"objective": "ntp", "warmup": "none"}  # left out of a row's label when at these values


def parse_grid(text):
    """'rank=2,init=document,augmenter=model,warmup=shipped; ...' -> [(TrainConfig, augmenter, warmup), ...]."""
    configs = []
    for item in filter(None, (s.strip() for s in text.split(";"))):
        fields = dict(kv.split("=") for kv in item.replace(" ", "").split(",") if kv)
        augmenter, warmup = fields.pop("augmenter", "fallback"), fields.pop("warmup", "none")
        configs.append((TrainConfig(**{k: TRAIN_FIELDS[k](v) for k, v in fields.items()}), augmenter, warmup))
    return configs


def parse_schemes(text):
    """'sum,mean,score:0.5,dyprag' -> [("sum", 1.0), ("mean", 1.0), ("score", 0.5), ("dyprag", 1.0)]."""
    schemes = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, temperature = item.partition(":")
        if name not in SCHEMES:
            raise SystemExit(f"--schemes: unknown {name!r}; choose from {', '.join(SCHEMES)}")
        schemes.append((name, float(temperature or 1.0)))
    return schemes


def config_label(config, augmenter, warmup):
    label = {
        **{k: v for k, v in config.to_dict().items() if k in TRAIN_FIELDS},
        "augmenter": augmenter,
        "warmup": warmup,
    }
    return {k: v for k, v in label.items() if DEFAULT_LABEL.get(k) != v}


def shipped_warmup(model, tokenizer, generator, config, path, workdir):
    """The warm-up pair of the shipped warm-up corpus for `config` (warmup.warmup_pair: trained once, kept at
    `path`); its meta's cpu_s is the process CPU time of training it."""
    cpu = time.process_time()
    warm = warmup_pair(model, tokenizer, read_corpus(WARMUP_CORPUS), generator, config, path, workdir / "augment.jsonl")
    if "cpu_s" not in warm.meta:  # trained now, not loaded
        warm.meta["cpu_s"] = time.process_time() - cpu
        warm.save(path)
    return warm


def run(args):
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(None)
    docs = read_corpus(DATA / f"{args.split}_corpus.jsonl")
    questions = read_questions(DATA / f"{args.split}_qa.jsonl")
    index = retriever(args.retriever, docs)
    texts = {d.id: d.text for d in docs}
    workdir = args.workdir / args.split
    args.results.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if args.results.exists():
        done = {row["key"] for row in map(json.loads, args.results.read_text().splitlines())}

    def measure(key, pipeline, mode, **fields):
        """Answer every question in `mode` and append the row, unless a row with this key exists."""
        key = json.dumps(
            [args.split, key, mode, pipeline.config.top_k, pipeline.config.combination, pipeline.config.temperature]
            + ([args.retriever] if args.retriever != "bm25" else [])
        )  # bm25 rows predate the option
        if key in done:
            return
        summary = evaluate(pipeline, questions, [mode], batch_size=args.batch_size, progress=False)["modes"][mode]
        row = {
            "key": key,
            "split": args.split,
            "docs": len(docs),
            "mode": mode,
            "k": pipeline.config.top_k,
            "scheme": pipeline.config.combination,
            "temperature": pipeline.config.temperature,
            "retriever": args.retriever,
            **fields,
            **{
                m: round(summary[m], 4) if summary[m] is not None else None
                for m in ("em", "f1", "acc", "ungrounded", "recall", "latency_s")
            },
            "n": summary["n"],
        }
        print(json.dumps(row), flush=True)
        with open(args.results, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        done.add(key)

    for k in sorted({1, args.k}) if args.baselines else ():
        base = Pipeline(KnowledgeBase(model, tokenizer, index, {}, texts), AnswerConfig(top_k=k, combination="sum"))
        if k == 1 and args.retriever == "bm25":  # vanilla retrieves nothing
            measure("base", base, "vanilla")
        measure("base", base, "rag")
    fingerprint = model_fingerprint(model)
    schemes = parse_schemes(args.schemes)
    for config, augmenter, warmup in parse_grid(args.grid):
        generator = LMGenerator(model, tokenizer) if augmenter == "model" else None
        aug_start = time.process_time()
        augs = augment_documents(docs, generator, workdir / "augment.jsonl")
        augment_cpu = time.process_time() - aug_start
        label = config_label(config, augmenter, warmup)
        if args.augment_only:  # what the augmenter wrote and what its filters dropped, nothing trained
            row = {
                "split": args.split,
                "docs": len(docs),
                "mode": "augment",
                "augmenter": augmenter,
                "fallback_docs": sum(a.source == "fallback" for a in augs),
                "kept_qa": sum(len(a.qa) for a in augs if a.source == "model"),
                "dropped": {f: sum(a.dropped.get(f, 0) for a in augs) for f in ("qa_round_trip", "rewrite_repeat")},
                "augment_cpu_s_per_doc": round(augment_cpu / len(docs) / 2, 1),
            }
            print(json.dumps(row), flush=True)
            with open(args.augment_results, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            continue
        key = hashlib.sha256(json.dumps(label, sort_keys=True).encode()).hexdigest()[:12]
        warm = (
            shipped_warmup(model, tokenizer, generator, config, workdir / f"warmup-{key}.safetensors", workdir)
            if warmup == "shipped"
            else None
        )
        # --eval-only: serve the pairs already trained for this configuration, whatever version wrote them
        store = Store(workdir / "stores" / key, fingerprint, None if args.eval_only else config.to_dict())
        pending = [i for i, d in enumerate(docs) if not store.done(d)]
        if pending and args.eval_only:
            raise SystemExit(f"--eval-only: {len(pending)} documents of {label} are not trained yet")
        for start in range(0, len(pending), args.batch_docs):
            group = pending[start : start + args.batch_docs]
            cpu = time.process_time()
            params = encode(model, tokenizer, [docs[i].text for i in group], [augs[i] for i in group], config, warm)
            cpu = time.process_time() - cpu
            for i, p in zip(group, params):
                p.meta.update(cpu_s=cpu / len(group))
                store.put(docs[i], p)
            store.flush()
        params = [store[d.id] for d in docs]
        fields = {
            "config": label,
            "fallback_docs": sum(a.source == "fallback" for a in augs),
            "dropped": {f: sum(a.dropped.get(f, 0) for a in augs) for f in ("qa_round_trip", "rewrite_repeat")},
            "warmup_cpu_s": round(warm.meta.get("cpu_s", 0.0) / 2, 1) if warm is not None else None,
            "cpu_s_per_doc": round(sum(p.meta["cpu_s"] for p in params) / len(docs) / 2, 1),
            "augment_cpu_s_per_doc": round(augment_cpu / len(docs) / 2, 1) if pending else None,
            "final_loss": round(sum(p.meta["losses"][-1] for p in params) / len(params), 3),
        }
        for mode in args.modes.split(","):
            kb = KnowledgeBase(model, tokenizer, index, store, texts, warmup=warm)
            measure(key, Pipeline(kb, AnswerConfig(top_k=1)), mode, **fields)
            for scheme, temperature in schemes:
                answering = AnswerConfig(top_k=args.k, combination=scheme, temperature=temperature)
                measure(key, Pipeline(kb, answering), mode, **fields)


def retriever(name, docs):
    """The split's `name` retriever (dense and hybrid with the shipped all-MiniLM-L6-v2)."""
    bm25 = BM25Index.build(docs)
    if name == "bm25":
        return bm25
    dense = DenseIndex.build(docs, *load_embedder())
    return dense if name == "dense" else HybridIndex(bm25, dense)


def _training(c):
    extras = [c.get("objective", "ntp"), c["init"] + " B", c["augmenter"] + " pairs"]
    if c.get("warmup", "none") != "none":
        extras.append("warm-up")
    return f"r{c['rank']} lr {c['lr']:g} ×{c['epochs']}, " + ", ".join(extras)


def table(path, split):
    """Markdown: the baselines, then one line per training configuration and pair mode: F1 at top-1 and at
    top-k for every combination measured, the ungrounded share and the cost."""
    rows = [r for r in map(json.loads, path.read_text().splitlines()) if r["split"] == split]
    base = [r for r in rows if r.get("config") is None]
    lines = ["| baseline | k | F1 | EM | ungrounded | recall@k |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {r['mode']} | {r['k'] if r['mode'] != 'vanilla' else '—'} | {r['f1']:.3f} | {r['em']:.3f} | "
        f"{r['ungrounded']:.3f} | {'' if r['recall'] is None else format(r['recall'], '.3f')} |"
        for r in base
    ]
    settings = []
    for r in rows:
        setting = (r["k"], r["scheme"], r["temperature"]) if r["k"] > 1 else (1, "", 0)
        if r.get("config") is not None and setting not in settings:
            settings.append(setting)
    settings.sort()
    names = ["top-1"] + [f"top-{k} {name}{f' T={t:g}' if name == 'score' else ''}" for k, name, t in settings[1:]]
    groups = {}
    for r in rows:
        if r.get("config") is not None:
            groups.setdefault((json.dumps(r["config"], sort_keys=True), r["mode"]), {})[
                (r["k"], r["scheme"], r["temperature"]) if r["k"] > 1 else (1, "", 0)
            ] = r
    lines += [
        "",
        "| training | mode | " + " | ".join(f"F1 {n}" for n in names) + " | ungrounded (worst top-k) "
        "| s/doc (2 cores) |",
        "|" + "---|" * (len(names) + 4),
    ]
    for (config, mode), by in groups.items():
        cells = [f"{by[s]['f1']:.3f}" if s in by else "" for s in settings]
        worst = max((by[s]["ungrounded"] for s in settings[1:] if s in by), default=0.0)
        any_row = next(iter(by.values()))
        cost = any_row["cpu_s_per_doc"] + (any_row.get("augment_cpu_s_per_doc") or 0)
        lines.append(
            f"| {_training(json.loads(config))} | {mode} | " + " | ".join(cells) + f" | {worst:.3f} | {cost:.1f} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="dev", choices=["dev", "test"])
    parser.add_argument("--grid", default="init=shared", help="training configs, ';'-separated")
    parser.add_argument("--schemes", default="sum,mean,score:1,dyprag", help="combinations at top-k, ','-separated")
    parser.add_argument("--modes", default="prag,combine", help="pair modes to measure")
    parser.add_argument("--k", type=int, default=3, help="documents retrieved per question")
    parser.add_argument("--retriever", default="bm25", choices=list(RETRIEVERS))
    parser.add_argument("--batch-docs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16, help="questions per generate call")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--workdir", type=Path, default=cache_dir() / "sweep", help="augmentations and stores")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--eval-only", action="store_true", help="answer with the stores already trained")
    parser.add_argument(
        "--no-baselines",
        dest="baselines",
        action="store_false",
        help="skip the vanilla and rag rows (they do not depend on the training)",
    )
    parser.add_argument(
        "--augment-only", action="store_true", help="only augment; append the filters' drop counts to --augment-results"
    )
    parser.add_argument("--augment-results", type=Path, default=RESULTS.with_name("augment_filters.jsonl"))
    parser.add_argument("--table", action="store_true", help="print the tables of --results and exit")
    args = parser.parse_args()
    if args.table:
        for split in ("dev", "test"):
            print(f"\n{split}\n\n{table(args.results, split)}")
    else:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        run(args)


if __name__ == "__main__":
    main()

"""Dev-set sweep of the training defaults on the embedded SmolLM2 (README "Training defaults (measured)").

For every configuration: the first --docs documents of the demo corpus are augmented (cached in --workdir)
and trained (train_documents, --batch-docs per batch); then their questions are answered by the pipeline
in `prag` mode (fused, greedy, assistant turn primed with "The answer is", cut at the sentence end):

    gold   top-1 retrieval, which is each question's own document on this dev set
    top-3  BM25 top-3 among the swept documents, as `prag ask` serves (three pairs at once)

and once in `vanilla` mode (no pair) for reference. F1 is SQuAD's, max over aliases.
Cost: `cpu s/doc` is process CPU time per document divided by 2, i.e. the seconds per document on 2
cores if both were busy (the machine the budget is set for); `wall s/doc` is what this run took.

    python bench/sweep_train.py --docs 4 --grid "rank=2,lr=3e-4,epochs=1; rank=2,lr=1e-3,epochs=10"
    python bench/sweep_train.py --table        # the markdown table of every result so far

Each result is appended to --results (JSONL) as soon as it is measured. Trained pairs are kept in a store
per configuration under --workdir (with their training time in the metadata), so a sweep that is stopped
resumes where it was.
"""
import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import torch

from prag_core.augment import LMGenerator, augment_documents
from prag_core.corpus import DEMO_CORPUS, DEMO_QUESTIONS, read_corpus, read_questions
from prag_core.doc_params import model_fingerprint
from prag_core.metrics import exact_match, f1
from prag_core.model import cache_dir, load_model
from prag_core.pipeline import Pipeline
from prag_core.retrieval import BM25Index
from prag_core.samples import build_samples
from prag_core.store import Store
from prag_core.train import TrainConfig, train_documents

RESULTS = Path(__file__).parent / "results" / "sweep_train.jsonl"


def parse_grid(text):
    """'rank=2,lr=1e-3,epochs=4; ...' -> [(TrainConfig, augmenter), ...]; augmenter=model|fallback."""
    configs = []
    for item in filter(None, (s.strip() for s in text.split(";"))):
        fields = dict(kv.split("=") for kv in item.replace(" ", "").split(","))
        augmenter = fields.pop("augmenter", "model")
        types = {"rank": int, "epochs": int, "lr": float, "alpha": float, "construction": str}
        configs.append((TrainConfig(**{k: types[k](v) for k, v in fields.items()}), augmenter))
    return configs


def score(pipeline, questions, mode):
    """Mean EM and F1 of `questions` answered in `mode`, batches of 8."""
    em = f1_sum = 0.0
    for start in range(0, len(questions), 8):
        batch = questions[start:start + 8]
        for q, a in zip(batch, pipeline.answer([q.question for q in batch], mode)):
            em += exact_match(a.prediction, q.answers)
            f1_sum += f1(a.prediction, q.answers)
    return round(em / len(questions), 3), round(f1_sum / len(questions), 3)


def run(args):
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(None)
    docs = read_corpus(DEMO_CORPUS)[:args.docs]
    ids = {d.id for d in docs}
    with open(DEMO_QUESTIONS, encoding="utf-8") as f:
        gold = {row["id"]: row["doc_id"] for row in map(json.loads, filter(str.strip, f))}
    questions = [q for q in read_questions(DEMO_QUESTIONS) if gold[q.id] in ids]
    index = BM25Index.build(docs)
    texts = {d.id: d.text for d in docs}
    args.results.parent.mkdir(parents=True, exist_ok=True)

    def record(row):
        row = {"docs": len(docs), "questions": len(questions), "threads": args.threads, **row}
        print(json.dumps(row), flush=True)
        with open(args.results, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    vanilla = Pipeline(model, tokenizer, index, {}, texts)
    record({"config": "vanilla", **dict(zip(("em", "f1"), score(vanilla, questions, "vanilla")))})
    fingerprint = model_fingerprint(model)
    for config, augmenter in parse_grid(args.grid):
        generator = LMGenerator(model, tokenizer) if augmenter == "model" else None
        aug_start = time.perf_counter()
        augs = augment_documents(docs, generator, args.workdir / "augment.jsonl")
        aug_wall = time.perf_counter() - aug_start
        # trained pairs go to a store per configuration, so an interrupted sweep resumes where it stopped
        key = hashlib.sha256(json.dumps([config.to_dict(), augmenter]).encode()).hexdigest()[:12]
        store = Store(args.workdir / "stores" / key, fingerprint, config.to_dict())
        pending = [i for i, d in enumerate(docs) if not store.done(d)]
        for start in range(0, len(pending), args.batch_docs):
            group = pending[start:start + args.batch_docs]
            wall, cpu = time.perf_counter(), time.process_time()
            params = train_documents(model, tokenizer, [build_samples(docs[i].text, augs[i], tokenizer,
                                                                      config.construction) for i in group], config)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            for i, p in zip(group, params):
                p.meta.update(cpu_s=cpu / len(group), wall_s=wall / len(group))
                store.put(docs[i], p)
            store.flush()
        params = [store[d.id] for d in docs]
        gold_em, gold_f1 = score(Pipeline(model, tokenizer, index, store, texts, top_k=1), questions, "prag")
        top3_em, top3_f1 = score(Pipeline(model, tokenizer, index, store, texts, top_k=3), questions, "prag")
        record({"config": {k: v for k, v in config.to_dict().items() if k not in ("targets", "dtype", "seed")},
                "augmenter": augmenter, "fallback_docs": sum(a.source == "fallback" for a in augs),
                "gold_em": gold_em, "gold_f1": gold_f1, "top3_em": top3_em, "top3_f1": top3_f1,
                "cpu_s_per_doc": round(sum(p.meta["cpu_s"] for p in params) / len(docs) / 2, 1),
                "wall_s_per_doc": round(sum(p.meta["wall_s"] for p in params) / len(docs), 1),
                "augment_wall_s": round(aug_wall, 1),
                "final_loss": round(sum(p.meta["losses"][-1] for p in params) / len(params), 3)})


def table(path):
    """The markdown table of every result in `path`, in order (vanilla once per document count)."""
    lines = ["| docs | rank | α | lr | epochs | construction | augmenter | F1 gold pair | F1 top-3 pairs "
             "| EM gold | cpu s/doc | final loss |", "|" + "---|" * 12]
    vanilla_shown = set()
    for row in map(json.loads, path.read_text().splitlines()):
        if row["config"] == "vanilla":
            if row["docs"] in vanilla_shown:  # every run measures it; the same number each time
                continue
            vanilla_shown.add(row["docs"])
            lines.append(f"| {row['docs']} | vanilla (no pair) | | | | | | {row['f1']:.3f} | | {row['em']:.3f} | | |")
            continue
        c = row["config"]
        lines.append(f"| {row['docs']} | {c['rank']} | {c['alpha']:g} | {c['lr']:g} | {c['epochs']} | "
                     f"{c['construction']} | {row['augmenter']} | {row['gold_f1']:.3f} | {row['top3_f1']:.3f} | "
                     f"{row['gold_em']:.3f} | {row['cpu_s_per_doc']} | {row['final_loss']} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=4, help="the first N demo documents (and their questions)")
    parser.add_argument("--grid", default="rank=2,lr=1e-3,epochs=4", help="configs, ';'-separated")
    parser.add_argument("--batch-docs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--workdir", type=Path, default=cache_dir() / "sweep_train", help="augmentation cache")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--table", action="store_true", help="print the table of --results and exit")
    args = parser.parse_args()
    if args.table:
        print(table(args.results))
    else:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        run(args)


if __name__ == "__main__":
    main()

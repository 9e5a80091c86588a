"""Retrieval quality and speed of bm25, dense (all-MiniLM-L6-v2) and hybrid (docs/decisions.md, Retriever: hybrid).

Recall: for every question set of bench/data with supporting `docs`, recall@1/3/5 of each retriever over its
split's corpus (evaluate.retrieval_recall, as `prag eval` reports it).

Speed (time only): index build time per 1,000 documents and mean query latency (one query at a time, top 3),
on the demo corpus (its questions) and on a synthetic corpus of --synthetic documents (80 words each, drawn
from a Zipf-like made-up vocabulary; 50 queries of 8 words, each from one document). At that size the dense
index holds random unit vectors: exact search costs
the same whatever the values, and embedding 100k documents here would take ~an hour, so the dense build
time there is the rate measured on its first 1,000 documents.

    python bench/experiments/retrieval.py [--threads 2] [--synthetic 100000]
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from prag_core.answer.evaluate import retrieval_recall
from prag_core.corpus import (
    DEMO_CORPUS,
    DEMO_QUESTIONS,
    Document,
    corpus_sha256,
    read_corpus,
    read_questions,
    text_sha256,
)
from prag_core.retrieval.bm25 import BM25Index
from prag_core.retrieval.dense import DenseIndex, embed, load_embedder
from prag_core.retrieval.retrievers import HybridIndex

BENCH = Path(__file__).resolve().parents[1]
DATA = BENCH / "data"
RESULTS = BENCH / "results" / "retrieval.json"
SPLITS = {
    "dev": ("dev_corpus", "dev_qa"),
    "test": ("test_corpus", "test_qa"),
    "dev paraphrased": ("dev_corpus", "dev_paraphrase_qa"),
    "test paraphrased": ("test_corpus", "test_paraphrase_qa"),
}


def indexes(docs, model, ident):
    bm25, dense = BM25Index.build(docs), DenseIndex.build(docs, model, ident)
    return {"bm25": bm25, "dense": dense, "hybrid": HybridIndex(bm25, dense)}


def recall_table(model, ident):
    rows = {}
    for split, (corpus, qa) in SPLITS.items():
        if not (DATA / f"{qa}.jsonl").is_file():
            continue
        found = indexes(read_corpus(DATA / f"{corpus}.jsonl"), model, ident)
        questions = read_questions(DATA / f"{qa}.jsonl")
        rows[split] = {
            "n": len(questions),
            **{name: retrieval_recall(index, questions) for name, index in found.items()},
        }
    return rows


def synthetic_corpus(n, words=80, vocab=50_000, seed=0):
    rng = np.random.default_rng(seed)
    names = [f"w{i:x}" for i in range(vocab)]
    draws = np.minimum(rng.zipf(1.2, size=(n, words)) - 1, vocab - 1)
    docs = []
    for i, row in enumerate(draws):
        text = " ".join(names[j] for j in row)
        docs.append(Document(f"s{i}", text, None, text_sha256(text)))
    return docs


def latency(index, queries):
    index.search(queries[0], 3)  # warm-up
    start = time.perf_counter()
    for q in queries:
        index.search(q, 3)
    return (time.perf_counter() - start) / len(queries)


def speed(docs, model, ident, queries, embed_all):
    """Build seconds per 1,000 documents and mean query seconds of each retriever over `docs`."""
    start = time.perf_counter()
    bm25 = BM25Index.build(docs)
    bm25_s = time.perf_counter() - start
    sample = docs if embed_all else docs[:1000]
    start = time.perf_counter()
    dense = DenseIndex.build(sample, model, ident)
    dense_s = (time.perf_counter() - start) / len(sample) * len(docs)
    if not embed_all:  # random unit rows for the rest: search time does not depend on the values
        rows = torch.nn.functional.normalize(torch.randn(len(docs), dense.embeddings.shape[1]), dim=1)
        dense = DenseIndex([d.id for d in docs], rows, ident, corpus_sha256(docs), [""] * len(docs), model)
    found = {"bm25": bm25, "dense": dense, "hybrid": HybridIndex(bm25, dense)}
    per_k = 1000 / len(docs)
    return {
        "documents": len(docs),
        "build_s_per_1k": {"bm25": bm25_s * per_k, "dense": dense_s * per_k, "hybrid": (bm25_s + dense_s) * per_k},
        "query_ms": {name: 1000 * latency(index, queries) for name, index in found.items()},
        "query_embed_ms": 1000 * latency_embed(model, queries),
    }


def latency_embed(model, queries):
    embed(model, queries[:1])
    start = time.perf_counter()
    for q in queries:
        embed(model, [q])
    return (time.perf_counter() - start) / len(queries)


def markdown(results):
    lines = [
        "| question set | n | " + " | ".join(f"{r} R@1 / R@3 / R@5" for r in ("bm25", "dense", "hybrid")) + " |",
        "|---|---|---|---|---|",
    ]
    for split, row in results["recall"].items():
        cells = [" / ".join(f"{row[r][f'recall@{k}']:.3f}" for k in (1, 3, 5)) for r in ("bm25", "dense", "hybrid")]
        lines.append(f"| {split} | {row['n']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| corpus | documents | build s/1k docs bm25 / dense | query ms bm25 / dense / hybrid "
        "(of which query embedding) |",
        "|---|---|---|---|",
    ]
    for name, s in results["speed"].items():
        b, q = s["build_s_per_1k"], s["query_ms"]
        lines.append(
            f"| {name} | {s['documents']} | {b['bm25']:.2f} / {b['dense']:.1f} | "
            f"{q['bm25']:.2f} / {q['dense']:.2f} / {q['hybrid']:.2f} ({s['query_embed_ms']:.2f}) |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--synthetic", type=int, default=100_000, help="documents of the synthetic corpus (0: none)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, ident = load_embedder()
    results = {"threads": args.threads, "recall": recall_table(model, ident), "speed": {}}
    demo_questions = [json.loads(line)["question"] for line in DEMO_QUESTIONS.read_text().splitlines() if line]
    results["speed"]["demo"] = speed(read_corpus(DEMO_CORPUS), model, ident, demo_questions, embed_all=True)
    if args.synthetic:
        docs = synthetic_corpus(args.synthetic)
        rng = np.random.default_rng(1)  # 50 queries of 8 words, each from one document
        queries = [" ".join(rng.choice(docs[i].text.split(), 8)) for i in rng.choice(len(docs), 50)]
        results["speed"]["synthetic"] = speed(docs, model, ident, queries, embed_all=False)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()

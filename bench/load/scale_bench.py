"""Retrieval at a million passages: index build time, size on disk, peak memory, query latency at 1 thread.

Synthetic data, seeded (speed does not depend on meaning):
- passages: 100 words each (DPR's Wikipedia split), drawn from a 300k-word invented vocabulary with Zipf
  frequencies (p ∝ 1/rank, so "the"-like words are in nearly every passage, as in English); a question is 6 words
  of one passage plus 2 of the 20 most frequent words.
- embeddings: 384-dimensional unit vectors (MiniLM's size) clustered round 10k random centres (cosine to the
  centre ~0.7, as sentence embeddings cluster by topic; uniform random vectors have no neighbours to find); a
  query is a passage's vector with the same noise added. The query embedding itself is timed separately, with the
  real MiniLM on a real question, and added for hybrid.

Stages, each in its own process (so its peak RSS is its own), rows appended to --out as each finishes:

    bm25     BM25Index.build over the passages, save, open (memory-mapped), search p50/p99 at k = 100 (hybrid's
             depth) and k = 3
    bm25-add the build again with 1 % more passages, the saved index reused (what `prag build` does when
             documents are added)
    dense    DenseIndex over the vectors (exact FAISS at <= EXACT_MAX, IVF above: training and adding timed),
             save, recall@10 of IVF against exact search at several nprobe (at <= EXACT_MAX too, with the IVF
             the index would train above it), latency p50/p99 of each
    compact  the 21M plan's candidates (docs/decisions.md, Scale), which prag does not ship: IVF-PQ (48-byte
             codes, the IVF's lists), the same re-ranking its top 10·k exactly from the float rows, and HNSW
             (32 links) over 8-bit scalars; build time, bytes on disk, recall@10 and latency at several depths
    hybrid   both indexes opened from their files, the real MiniLM embedding the question: HybridIndex.search
             p50/p99 (what `prag ask` waits for)

    python bench/load/scale_bench.py [--sizes 100000,1000000] [--stages bm25,bm25-add,dense,compact,hybrid]
                                     [--dir /tmp/prag-scale]
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

WORDS, LENGTH, CENTRES, DIM, QUERIES = 300_000, 100, 10_000, 384, 200


def vocabulary():
    """300k invented words from syllables, in frequency-rank order."""
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]  # 70
    return [
        "".join(syllables[(i // 70**j) % 70] for j in range(1 + (i >= 70) + (i >= 4900) + (i >= 343_000)))
        for i in range(WORDS)
    ]


def passages(n, seed=0):
    """(ids, texts) of n synthetic passages."""
    import numpy as np

    rng = np.random.default_rng(seed)
    words = np.array(vocabulary())
    p = 1 / np.arange(1, WORDS + 1)
    p /= p.sum()
    texts = []
    for start in range(0, n, 10_000):
        ids = rng.choice(WORDS, (min(10_000, n - start), LENGTH), p=p)
        texts += [" ".join(row) for row in words[ids]]
    return [f"p{i}" for i in range(n)], texts


def questions(texts, seed=1):
    import numpy as np

    rng = np.random.default_rng(seed)
    common = vocabulary()[:20]
    out = []
    for i in rng.choice(len(texts), QUERIES, replace=False):
        words = texts[i].split()
        out.append(" ".join([*rng.choice(common, 2), *rng.choice(words, 6)]))
    return out


def vectors(n, seed=0):
    """(n, DIM) float32 unit rows clustered round CENTRES centres, and QUERIES query vectors near rows."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CENTRES, DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, DIM), np.float32)
    for start in range(0, n, 100_000):
        rows = centres[rng.integers(0, CENTRES, min(100_000, n - start))]
        rows += rng.standard_normal(rows.shape, dtype=np.float32) * 0.05
        out[start : start + len(rows)] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    queries = out[rng.choice(n, QUERIES, replace=False)] + rng.standard_normal((QUERIES, DIM), dtype=np.float32) * 0.05
    return out, queries / np.linalg.norm(queries, axis=1, keepdims=True)


def latency_ms(fn, items):
    fn(items[0])
    times = []
    for item in items:
        start = time.perf_counter()
        fn(item)
        times.append(1000 * (time.perf_counter() - start))
    times.sort()
    return {"p50_ms": round(statistics.median(times), 3), "p99_ms": round(times[int(0.99 * (len(times) - 1))], 3)}


def exact_top10(emb, queries):
    """The exact inner-product index over emb and each query's true top 10, which recall is measured against."""
    import faiss

    exact = faiss.IndexFlatIP(DIM)
    exact.add(emb)
    return exact, exact.search(queries, 10)[1]


def recall_at_10(found, truth):
    return round(sum(len(set(f) & set(t)) for f, t in zip(found, truth)) / truth.size, 4)


def peak_rss_gb():
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def stage_bm25(n, folder):
    from prag_core.corpus import Document
    from prag_core.retrieval.bm25 import BM25Index

    ids, texts = passages(n)
    docs = [Document(i, t, None, "") for i, t in zip(ids, texts)]
    start = time.perf_counter()
    index = BM25Index.build(docs, progress=True)
    build_s = time.perf_counter() - start
    path = folder / f"bm25-{n}.safetensors"
    index.save(path)
    qs = questions(texts)
    del docs, texts, index
    start = time.perf_counter()
    index = BM25Index.load(path)
    load_s = time.perf_counter() - start
    rows = []
    for k in (100, 3):
        rows.append(
            {
                "k": k,
                "build_s": round(build_s, 1),
                "load_s": round(load_s, 2),
                "size_mb": round(path.stat().st_size / 1e6),
                "nnz": len(index._arrays["score"]),
                "vocab": len(index.vocab),
                **latency_ms(lambda q: index.search(q, k), qs),
            }
        )
    return rows


def stage_bm25_add(n, folder):
    """Documents added to a built index: 1 % more passages, the index of the first n reused."""
    from prag_core.corpus import Document
    from prag_core.retrieval.bm25 import BM25Index

    ids, texts = passages(n + n // 100)
    docs = [Document(i, t, None, "") for i, t in zip(ids, texts)]
    previous = BM25Index.load(folder / f"bm25-{n}.safetensors")
    start = time.perf_counter()
    BM25Index.build(docs, previous, progress=True)
    return [{"added": n // 100, "build_s": round(time.perf_counter() - start, 1)}]


def stage_dense(n, folder):

    from prag_core.retrieval import dense

    emb, queries = vectors(n)
    import torch

    start = time.perf_counter()
    index = dense.DenseIndex([f"p{i}" for i in range(n)], torch.from_numpy(emb), "synthetic", "", [""] * n)
    build_s = time.perf_counter() - start
    path = folder / f"dense-{n}.safetensors"
    index.save(path)
    exact, truth = exact_top10(emb, queries)
    common = {"build_s": round(build_s, 1), "size_mb": round(path.stat().st_size / 1e6)}
    rows = [{"search": "exact", **common, "recall@10": 1.0, **latency_ms(lambda q: exact.search(q[None], 10), queries)}]
    ivf = index._search_index
    if n <= dense.EXACT_MAX:  # the index is exact here: train the IVF it would use, to measure it
        start = time.perf_counter()
        ivf = dense._train_ivf(emb)
        common["build_s"] = round(time.perf_counter() - start, 1)
    for nprobe in (8, 16, 32, 64, 128, 256):
        ivf.nprobe = nprobe
        rows.append(
            {
                "search": f"ivf{ivf.nlist},nprobe={nprobe}",
                **common,
                "recall@10": recall_at_10(ivf.search(queries, 10)[1], truth),
                **latency_ms(lambda q: ivf.search(q[None], 10), queries),
            }
        )
    return rows


def stage_compact(n, folder):
    import faiss

    from prag_core.retrieval.dense import ivf_lists_and_sample

    emb, queries = vectors(n)
    truth = exact_top10(emb, queries)[1]
    lists, sample = ivf_lists_and_sample(emb)
    rows = []
    for name, key, knob, depths in (
        ("ivf-pq", f"IVF{lists},PQ48", "nprobe", (32, 128, 256)),
        ("ivf-pq, top 100 re-ranked", f"IVF{lists},PQ48,RFlat", "nprobe", (32, 128, 256)),
        ("hnsw-sq8", "HNSW32,SQ8", "efSearch", (64, 128, 256)),
    ):
        start = time.perf_counter()
        index = faiss.index_factory(DIM, key, faiss.METRIC_INNER_PRODUCT)
        if knob == "nprobe":  # polysemous codes serve Hamming pre-filtering, unused here, and cost minutes
            faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = False
        index.train(sample)
        index.add(emb)
        build_s = round(time.perf_counter() - start, 1)
        path = folder / f"{name.split(',')[0]}-{n}.faiss"
        faiss.write_index(index, str(path))
        size_mb = round(path.stat().st_size / 1e6)  # the re-ranked one holds the float rows too
        for depth in depths:
            params = faiss.SearchParametersIVF(nprobe=depth) if knob == "nprobe" else faiss.SearchParametersHNSW()
            if knob == "efSearch":
                params.efSearch = depth
            if "RFlat" in key:
                params = faiss.IndexRefineSearchParameters(k_factor=10, base_index_params=params)
            rows.append(
                {
                    "search": f"{name}, {knob}={depth}",
                    "build_s": build_s,
                    "size_mb": size_mb,
                    "recall@10": recall_at_10(index.search(queries, 10, params=params)[1], truth),
                    **latency_ms(lambda q: index.search(q[None], 10, params=params), queries),
                }
            )
        path.unlink()
    return rows


def stage_hybrid(n, folder):
    from prag_core.retrieval.bm25 import BM25Index
    from prag_core.retrieval.dense import DenseIndex, embed, load_embedder
    from prag_core.retrieval.retrievers import HybridIndex

    _, texts = passages(n)
    qs = questions(texts)
    del texts
    start = time.perf_counter()
    bm25 = BM25Index.load(folder / f"bm25-{n}.safetensors")
    vectors_index = DenseIndex.load(folder / f"dense-{n}.safetensors")
    open_s = time.perf_counter() - start
    vectors_index.model, _ = load_embedder()
    hybrid = HybridIndex(bm25, vectors_index)
    real = "Who was the first director of the institute where velmorine was first isolated?"
    embedding = latency_ms(lambda q: embed(vectors_index.model, [q]), [real] * 50)
    search = latency_ms(lambda q: hybrid.search(q, 3), qs)
    return [
        {"search": "query embedding (MiniLM, one question)", **embedding},
        {"search": "hybrid k=3 (depth 100 each)", "open_s": round(open_s, 1), **search},
    ]


STAGES = {
    "bm25": stage_bm25,
    "bm25-add": stage_bm25_add,
    "dense": stage_dense,
    "compact": stage_compact,
    "hybrid": stage_hybrid,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--stages", default="bm25,bm25-add,dense,compact,hybrid")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/prag-scale"), help="where the indexes are written")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results" / "scale.jsonl")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # STAGE:N, in the child process
    args = parser.parse_args()
    if args.run:
        stage, n = args.run.split(":")
        import faiss
        import torch

        torch.set_num_threads(1)
        faiss.omp_set_num_threads(1)
        args.dir.mkdir(parents=True, exist_ok=True)
        rows = STAGES[stage](int(n), args.dir)
        info = {"stage": stage, "n": int(n), "peak_rss_gb": peak_rss_gb(), "machine": platform.machine()}
        info["date"] = time.strftime("%Y-%m-%d")
        info["cpus"] = os.cpu_count()
        info["load1"] = round(os.getloadavg()[0], 2)
        with args.out.open("a") as f:
            for row in rows:
                f.write(json.dumps({**info, **row}) + "\n")
                print(json.dumps({**info, **row}), flush=True)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    for n in args.sizes.split(","):
        for stage in args.stages.split(","):
            cmd = [sys.executable, __file__, "--run", f"{stage}:{n}", "--dir", str(args.dir), "--out", str(args.out)]
            subprocess.run(cmd, check=True, env=env)


if __name__ == "__main__":
    main()

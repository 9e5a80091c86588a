"""The parameter store at scale (docs/design.md, Scaling out): opening a big catalog, lookups, and a build's
time per document as the store grows.

    open     a catalog of --catalog documents (rows written straight into SQLite, pointing at shards
             of 256 that are not there: only the catalog is timed); then Store(folder, fingerprint) and
             one lookup, --repeat times (the OS page cache is warm after the first)
    lookups  10,000 `id in store` on random ids of that catalog, 9 in 10 present; and tags() over it
    build    --build tiny random documents put into a new store one by one, flush() after every
             --batch of them as `prag build` does, in both layouts (a file per document; shards of
             256); seconds per 1,000 documents, the last thousand's over the first's (and the median of
             the last three over the first three's: a WAL checkpoint or another job can slow any one
             thousand), and close()

    python bench/load/store_bench.py [--catalog 1000000] [--build 10000] [--out bench/results/store.jsonl]

Prints one JSON line per measurement and appends them to --out, with the load average of the machine.
"""

import argparse
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))  # tests/tiny.py: random models and documents
from tiny import random_doc_params, tiny_llama  # noqa: E402

from prag_core.corpus import Document, text_sha256  # noqa: E402
from prag_core.model.inject import inject  # noqa: E402
from prag_core.pairs.doc_params import model_fingerprint  # noqa: E402
from prag_core.storage.store import CATALOG, Store, training_tag  # noqa: E402

TRAINING = {"rank": 2, "bench": True}


def record(out, row):
    row = {**row, "load_average": [round(x, 1) for x in os.getloadavg()], "cpus": os.cpu_count()}
    print(json.dumps(row), flush=True)
    with open(out, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def big_catalog(folder, fingerprint, n):
    """A sharded store's catalog of n documents whose shards are not written."""
    Store(folder, fingerprint, TRAINING, shard_size=256).close()
    tag, sha = training_tag(TRAINING), "ab" * 32
    db = sqlite3.connect(folder / CATALOG)
    with db:
        db.executemany(
            "INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?)",
            ((f"wiki:{i}", sha, tag, f"shards/{i // 256:010d}.safetensors", i % 256, sha) for i in range(n)),
        )
        db.executemany(
            "INSERT INTO payloads VALUES (?, ?)", ((f"shards/{s:010d}.safetensors", 0) for s in range(n // 256 + 1))
        )
    db.close()  # as a build's end does: the WAL is checkpointed into the catalog


def bench_catalog(args, fingerprint, folder):
    start = time.perf_counter()
    big_catalog(folder, fingerprint, args.catalog)
    written = time.perf_counter() - start
    opens = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        store = Store(folder, fingerprint)
        assert "wiki:123" in store
        opens.append(time.perf_counter() - start)
    record(
        args.out,
        {
            "bench": "open + 1 lookup",
            "documents": args.catalog,
            "ms_first": round(opens[0] * 1e3, 1),
            "ms_median": round(statistics.median(opens) * 1e3, 1),
            "catalog_written_s": round(written, 1),
            "catalog_bytes_per_document": round((folder / CATALOG).stat().st_size / args.catalog),
        },
    )
    ids = [f"wiki:{random.randrange(args.catalog * 10 // 9)}" for _ in range(10_000)]
    start = time.perf_counter()
    found = sum(doc_id in store for doc_id in ids)
    record(
        args.out,
        {
            "bench": "10,000 lookups",
            "documents": args.catalog,
            "found": found,
            "s": round(time.perf_counter() - start, 3),
        },
    )
    start = time.perf_counter()
    tags = store.tags()
    record(args.out, {"bench": "tags()", "documents": sum(tags.values()), "s": round(time.perf_counter() - start, 3)})


def bench_build(args, model, fingerprint, root):
    params = random_doc_params(model, n=16)
    for p in params:
        p.meta["training"] = TRAINING
    for layout, shard_size in (("files", None), ("sharded", 256)):
        store = Store(root / layout, fingerprint, TRAINING, shard_size=shard_size)
        per_thousand, start = [], time.perf_counter()
        for i in range(args.build):
            text = f"Tiny document {i}."
            store.put(Document(id=f"doc/{i}", text=text, title=None, sha256=text_sha256(text)), params[i % 16])
            if (i + 1) % args.batch == 0:
                store.flush()
            if (i + 1) % 1000 == 0:
                per_thousand.append(time.perf_counter() - start)
                start = time.perf_counter()
        start = time.perf_counter()
        store.close()
        record(
            args.out,
            {
                "bench": "build",
                "layout": layout,
                "documents": args.build,
                "batch": args.batch,
                "s_per_1000": [round(s, 2) for s in per_thousand],
                "last_over_first": round(per_thousand[-1] / per_thousand[0], 2),
                "last_3_over_first_3": round(
                    statistics.median(per_thousand[-3:]) / statistics.median(per_thousand[:3]), 2
                ),
                "close_s": round(time.perf_counter() - start, 2),
                "store_mib": round(store.size_bytes() / 2**20, 1),
            },
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog", type=int, default=1_000_000, help="documents in the catalog to open")
    parser.add_argument("--repeat", type=int, default=5, help="times the catalog is opened")
    parser.add_argument("--build", type=int, default=10_000, help="documents to build, per layout (≥ 1000)")
    parser.add_argument("--batch", type=int, default=4, help="documents per flush() (prag build's --batch-docs)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results" / "store.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = inject(tiny_llama())
    fingerprint = model_fingerprint(model)
    with tempfile.TemporaryDirectory() as tmp:
        bench_catalog(args, fingerprint, Path(tmp) / "catalog")
        bench_build(args, model, fingerprint, Path(tmp))


if __name__ == "__main__":
    main()

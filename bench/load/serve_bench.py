"""`prag serve` under load: the embedded SmolLM2 and the demo work directory.

Variants, two `prag serve` processes (--threads 1 by default) and this one's client threads:
  fused, batched       --max-batch 16 --batch-window-ms 10: `prag serve`'s defaults
  fused, one at a time --max-batch 1
  merge                `prag: {"update": "merge"}` to the first: one request at a time (merging changes the
                       weights every row sees)
At 1, 4 and 16 concurrent clients (the official openai client, one thread each, asking the demo questions in
turn, mode prag), the variants interleaved round by round so a busy neighbour slows all of them alike:
requests/s, p50 and p99 latency, and the per-round ratio of each variant's requests/s to merge's (median).
--soak N then sends N requests from 16 clients to the batched server, mixed valid and invalid: a failure is a
valid request without its 200 or an invalid one without its 4xx.

    python bench/load/serve_bench.py [--workdir W] [--rounds 3] [--per-client 2] [--soak 1000] [--threads 1]

Writes the table to stdout and the raw numbers to --out (default bench/results/serve.json).
"""

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import openai

from prag_core.corpus import DEMO_QUESTIONS, read_questions
from prag_core.model.load import cache_dir
from prag_core.storage.workdir import Workdir

CLIENTS = (1, 4, 16)
VARIANTS = ("fused, batched", "fused, one at a time", "merge")


@contextmanager
def server(workdir, threads, *options):
    """A `prag serve` process on a free port until the block ends; yields its URL and the rows of each batch it
    logs (a list that grows)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prag_core.cli",
            "serve",
            "--workdir",
            workdir,
            "--port",
            str(port),
            "--threads",
            str(threads),
            "--device",
            "cpu",
            *options,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    sizes = []

    def read():  # rows decoding together after each join ("joined N rows: M running"); a merged row runs alone
        for line in proc.stdout:
            if match := re.search(r"joined \d+ rows: (\d+) running", line):
                sizes.append(int(match[1]))
            elif "merged row done" in line:
                sizes.append(1)

    threading.Thread(target=read, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prag serve exited with status {proc.returncode}")
            try:
                urllib.request.urlopen(f"{url}/health", timeout=5).read()
                break
            except OSError:
                time.sleep(0.5)
        yield url, sizes
    finally:
        proc.terminate()
        proc.wait(120)


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def in_threads(client, clients):
    """Seconds for client(0) ... client(clients - 1), each in its own thread, to finish."""
    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def burst(url, model, questions, clients, per_client, update):
    """(wall seconds, latencies, answers by question) of clients x per_client requests, `clients` at a time."""
    c = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
    latencies, answers = [], {}

    def client(i):
        for j in range(per_client):
            q = questions[(i * per_client + j) % len(questions)]
            start = time.perf_counter()
            r = c.chat.completions.create(
                model=model, messages=[{"role": "user", "content": q}], extra_body={"prag": {"update": update}}
            )
            latencies.append(time.perf_counter() - start)
            answers[q] = r.choices[0].message.content

    return in_threads(client, clients), latencies, answers


def load(batched, single, model, questions, rounds, per_client):
    """Rows per (clients, variant): requests/s, p50, p99, ratio to merge, answers equal to merge's, rows per batch.
    batched, single: (URL, batch sizes) of the two servers."""
    targets = {
        "fused, batched": (batched, "fused"),
        "fused, one at a time": (single, "fused"),
        "merge": (batched, "merge"),
    }
    rows = []
    for clients in CLIENTS:
        runs, sizes = {v: [] for v in VARIANTS}, {v: [] for v in VARIANTS}
        for _ in range(rounds):
            for variant in VARIANTS:
                (url, logged), update = targets[variant]
                logged.clear()
                runs[variant].append(burst(url, model, questions, clients, per_client, update))
                sizes[variant] += logged
                print(
                    f"  {clients:2d} clients, {variant}: {clients * per_client / runs[variant][-1][0]:.2f} req/s",
                    file=sys.stderr,
                )
        for variant in VARIANTS:
            latencies = [x for _, lat, _ in runs[variant] for x in lat]
            ratios = [m[0] / r[0] for r, m in zip(runs[variant], runs["merge"])]  # merge's wall / this one's
            same = [run[2][q] == merged[2][q] for run, merged in zip(runs[variant], runs["merge"]) for q in merged[2]]
            rows.append(
                {
                    "clients": clients,
                    "variant": variant,
                    "rps": clients * per_client * rounds / sum(w for w, _, _ in runs[variant]),
                    "p50_s": statistics.median(latencies),
                    "p99_s": percentile(latencies, 0.99),
                    "vs_merge": statistics.median(ratios),
                    "same_as_merge": sum(same) / len(same),
                    "rows_per_batch": statistics.mean(sizes[variant]),
                }
            )
    return rows


def soak_requests(questions, doc_ids):
    """(JSON body or raw text, expected status) of the kinds cycled through; half are invalid."""
    q, user = questions[0], (lambda text: [{"role": "user", "content": text}])
    return [
        ({"messages": user(q)}, 200),
        ({"messages": user(q), "stream": True}, 200),
        ({"messages": user(questions[1]), "max_tokens": 8, "prag": {"mode": "vanilla"}}, 200),
        ({"messages": user(questions[2]), "prag": {"documents": [doc_ids[3]]}}, 200),
        ({"messages": user(questions[3]), "prag": {"top_k": 1, "mode": "combine"}}, 200),
        ({"messages": user(questions[4]), "prag": {"top_k": 1}}, 200),
        ({"messages": user(q), "prag": {"documents": ["no-such-document"]}}, 404),
        ({"messages": user(q), "prag": {"mode": "magic"}}, 400),
        ({"messages": user(q), "prag": {"top_k": 0}}, 400),
        ('{"messages": [', 400),
        ({"messages": [{"role": "system", "content": "hi"}]}, 400),
        ({"messages": user("why " * 9000)}, 413),
    ]


def status_of(url, body):
    data = (body if isinstance(body, str) else json.dumps(body)).encode()
    request = urllib.request.Request(f"{url}/v1/chat/completions", data, {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=600) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


def soak(url, questions, doc_ids, n, clients=16):
    """(failures, seconds, counts by status) of n mixed requests from `clients` threads."""
    kinds = soak_requests(questions, doc_ids)
    failures, statuses, lock = [], {}, threading.Lock()

    def client(i):
        for k in range(i, n, clients):
            body, expected = kinds[k % len(kinds)]
            try:
                got = status_of(url, body)
            except OSError as err:
                got = repr(err)
            with lock:
                statuses[got] = statuses.get(got, 0) + 1
                if got != expected:
                    failures.append((k, expected, got))

    return failures, in_threads(client, clients), statuses


def table(rows):
    lines = [
        "| clients | variant | requests/s | p50 | p99 | p99/p50 | requests/s vs merge | rows per batch | "
        "same answers as merge |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['clients']} | {r['variant']} | {r['rps']:.2f} | {r['p50_s']:.2f} s | {r['p99_s']:.2f} s | "
            f"{r['p99_s'] / r['p50_s']:.2f} | {r['vs_merge']:.2f}x | {r['rows_per_batch']:.1f} | "
            f"{r['same_as_merge']:.0%} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=str(cache_dir() / "demo"), help="default: prag demo's ($PRAG_CACHE/demo)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-client", type=int, default=2, help="requests each client sends per round")
    parser.add_argument("--soak", type=int, default=1000, help="requests of the soak run (0: none)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of each server")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "serve.json"))
    args = parser.parse_args(argv)
    questions = [q.question for q in read_questions(DEMO_QUESTIONS)]
    doc_ids = [d.id for d in Workdir(args.workdir).read_corpus()]
    with (
        server(args.workdir, args.threads) as batched,
        server(args.workdir, args.threads, "--max-batch", "1") as single,
    ):
        with urllib.request.urlopen(f"{batched[0]}/v1/models") as r:
            model = json.load(r)["data"][0]["id"]
        for url, _ in (batched, single):
            burst(url, model, questions[:2], 2, 1, "fused")  # warm-up: the first calls load documents
        rows = load(batched, single, model, questions, args.rounds, args.per_client)
        print(table(rows))
        result = {
            "threads": args.threads,
            "rounds": args.rounds,
            "per_client": args.per_client,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end",
            "date": time.strftime("%Y-%m-%d"),
            "batching": "continuous",
            "rows": rows,
        }
        if args.soak:
            failures, seconds, statuses = soak(batched[0], questions, doc_ids, args.soak)
            print(
                f"soak: {args.soak} requests from 16 clients in {seconds:.0f} s, {len(failures)} failed; "
                f"statuses {dict(sorted(statuses.items(), key=str))}"
            )
            result["soak"] = {
                "requests": args.soak,
                "failed": len(failures),
                "seconds": seconds,
                "statuses": {str(k): v for k, v in statuses.items()},
                "failures": failures[:20],
            }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

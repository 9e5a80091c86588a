"""`prag serve --ray` under load: requests/s of 1 and of 2 Ray Serve replicas at 16 clients.

The embedded SmolLM2 and the demo work directory, as serve_bench.py (whose server and clients this reuses):
`prag serve --ray --replicas N --threads 1` on a new local Ray cluster, one N after the other (two clusters at
once would share the CPUs); after a warm-up, --rounds rounds of 16 clients (the official openai client, one
thread each, asking the demo questions in turn, mode prag, each request routed by its retrieved documents)
sending --per-client requests each.

The ceiling of this machine, measured the same way without Ray: N plain `prag serve` processes side by side,
the 16 clients split evenly over them (what N replicas could reach with a free router and proxy).

    python bench/load/serve_ray_bench.py [--workdir W] [--replicas 1,2] [--rounds 3] [--per-client 2] [--threads 1]

Writes a table to stdout and the raw rows (one per round: seconds, latencies) with the machine and date to --out
(default bench/results/serve_ray.json).
"""

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
import urllib.request
from pathlib import Path

from serve_bench import burst, in_threads, percentile, server

from prag_core.corpus import DEMO_QUESTIONS, read_questions
from prag_core.model.load import cache_dir

CLIENTS = 16


def table(rows):
    """One line per setup (Ray or plain) and replica count: requests/s over all rounds, p50 and p99 latency,
    speed-up over the same setup's first count."""
    lines = ["| setup | replicas | requests/s | p50 | p99 | vs 1st |", "|---|---|---|---|---|---|"]
    first = {}
    for setup, replicas in dict.fromkeys((r["setup"], r["replicas"]) for r in rows):
        runs = [r for r in rows if (r["setup"], r["replicas"]) == (setup, replicas)]
        rps = sum(r["requests"] for r in runs) / sum(r["seconds"] for r in runs)
        latencies = [x for r in runs for x in r["latencies"]]
        first.setdefault(setup, rps)
        name = "Ray Serve" if setup == "ray" else "plain servers, clients split"
        lines.append(
            f"| {name} | {replicas} | {rps:.2f} | {statistics.median(latencies):.2f} s | "
            f"{percentile(latencies, 0.99):.2f} s | {rps / first[setup]:.2f}x |"
        )
    return "\n".join(lines)


@contextlib.contextmanager
def servers(setup, workdir, replicas, threads):
    """URLs to send to: one Ray Serve entry point, or `replicas` plain servers."""
    with contextlib.ExitStack() as stack:
        if setup == "ray":
            url, _ = stack.enter_context(server(workdir, threads, "--ray", "--replicas", str(replicas)))
            yield [url]
        else:
            yield [stack.enter_context(server(workdir, threads))[0] for _ in range(replicas)]


def split_burst(urls, model, questions, per_client):
    """burst() with the CLIENTS spread evenly over urls, all at once: (wall seconds, latencies)."""
    results = [None] * len(urls)

    def one(i):
        results[i] = burst(urls[i], model, questions[i :: len(urls)], CLIENTS // len(urls), per_client, "fused")

    seconds = in_threads(one, len(urls))
    return seconds, [x for _, latencies, _ in results for x in latencies]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=str(cache_dir() / "demo"), help="default: prag demo's ($PRAG_CACHE/demo)")
    parser.add_argument("--replicas", default="1,2", help="replica counts, measured in this order")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-client", type=int, default=2, help="requests each client sends per round")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of each replica")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "serve_ray.json"))
    args = parser.parse_args(argv)
    questions = [q.question for q in read_questions(DEMO_QUESTIONS)]
    rows = []
    for setup in ("ray", "plain"):
        for replicas in (int(n) for n in args.replicas.split(",")):
            with servers(setup, args.workdir, replicas, args.threads) as urls:
                with urllib.request.urlopen(f"{urls[0]}/v1/models") as r:
                    model = json.load(r)["data"][0]["id"]
                split_burst(urls, model, questions, 1)  # warm-up: the first calls load documents
                for i in range(args.rounds):
                    seconds, latencies = split_burst(urls, model, questions, args.per_client)
                    requests = CLIENTS * args.per_client
                    print(f"  {setup} x{replicas}, round {i + 1}: {requests / seconds:.2f} req/s", file=sys.stderr)
                    rows.append(
                        {"setup": setup, "replicas": replicas, "round": i, "requests": requests}
                        | {"seconds": seconds, "latencies": latencies}
                    )
    print(table(rows))
    result = {
        "clients": CLIENTS,
        "threads": args.threads,
        "per_client": args.per_client,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end",
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Write docs/results.md from the committed raw results in bench/results/ (one section per result file).

    python bench/results_doc.py [--out docs/results.md]

The output depends on the raw files and on today's defaults only (no time of generation, rows sorted, floats
at fixed precision), so tests/test_results_doc.py can check that the committed docs/results.md is current.
Today's defaults: TrainConfig() with `prag build`'s augmenter and warm-up, the retriever RETRIEVER, and the
serving top-k, combination and temperature of the pipeline. bench/results/archive/ (retired runs) is left out.
"""

import argparse
import json
import os
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
OUT = ROOT / "docs" / "results.md"
DISPATCH_TABLE = ROOT / "kernels" / "prag_kernels" / "dispatch_table.json"  # written by the GPU report
sys.path.insert(0, str(BENCH / "suites"))  # report.py: the suites' targets, recomputed from the raw JSON
sys.path.insert(0, str(BENCH / "experiments"))  # sweep.py: how a sweep row labels its training configuration

SPLITS = ("dev", "test")
MODE_ORDER = ("vanilla", "rag", "prag", "combine")
SUITES_RUN = "amd-epyc-2cpu"  # the committed run of the pytest-benchmark suites (<machine>.json and .md)


def defaults():
    """Today's defaults: {"training": sweep label, "retriever", "top_k", "combination", "temperature"}."""
    os.environ.setdefault("TRITON_INTERPRET", "1")  # importing prag_kernels must not need a GPU
    from sweep import config_label

    from prag_core.answer.config import COMBINATION, TEMPERATURE, TOP_K
    from prag_core.cli import WARMUP_DEFAULT
    from prag_core.offline.build import BuildConfig
    from prag_core.offline.train_config import TrainConfig
    from prag_core.retrieval.retrievers import RETRIEVER

    return {
        "training": config_label(TrainConfig(), BuildConfig.augmenter, WARMUP_DEFAULT),
        "retriever": RETRIEVER,
        "top_k": TOP_K,
        "combination": COMBINATION,
        "temperature": TEMPERATURE,
    }


# ---------------------------------------------------------------- formatting


def num(x, digits=3):
    return "—" if x is None else f"{x:.{digits}f}"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def source(name, machine, date):
    return f"From `bench/results/{name}`. Machine: {machine}. Date: {date}.\n"


def read_rows(name):
    return [json.loads(line) for line in (RESULTS / name).read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- the sweeps


def retriever_of(row):
    return row.get("retriever") or "bm25"  # rows written before sweep.py's --retriever were BM25's


def setting(row):
    """(k, scheme, temperature); at top-1 the combination does not matter: (1, "", 0.0)."""
    return (row["k"], row["scheme"], row["temperature"]) if row["k"] > 1 else (1, "", 0.0)


def setting_name(s):
    k, scheme, temperature = s
    return "top-1" if k == 1 else f"top-{k} {scheme}" + (f" T={temperature:g}" if scheme == "score" else "")


def training_name(c):
    parts = [
        f"r{c['rank']} α{c['alpha']:g} lr {c['lr']:g} ×{c['epochs']}",
        c.get("objective", "ntp"),
        f"{c['init']} B",
        f"{c['augmenter']} pairs",
    ]
    if c.get("construction", "prag") != "prag":
        parts.append(f"{c['construction']} sequences")
    parts.append("warm-up" if c.get("warmup", "none") != "none" else "no warm-up")
    return ", ".join(parts)


def is_default_serving(row, d):
    return row["k"] == 1 or (row["k"], row["scheme"], row["temperature"]) == (
        d["top_k"],
        d["combination"],
        d["temperature"],
    )


def mark(row, d):
    """'✓' where the row is today's default throughout; 'training' where only the training is (another retriever
    or combination); '' otherwise. Baselines (no pairs): '✓' with today's retriever."""
    if row.get("config") is None:
        return "✓" if row["mode"] == "rag" and retriever_of(row) == d["retriever"] else ""
    if row["config"] != d["training"]:
        return ""
    return "✓" if retriever_of(row) == d["retriever"] and is_default_serving(row, d) else "training"


def sweep_section(name, d):
    rows = read_rows(name)
    split_order = {s: i for i, s in enumerate(SPLITS)}
    mode_order = {m: i for i, m in enumerate(MODE_ORDER)}
    questions = ", ".join(
        f"{split} {n}" for split, n in sorted({(r["split"], r["n"]) for r in rows}, key=lambda s: split_order[s[0]])
    )
    out = [
        f"## `{name}`\n",
        source(name, "not recorded", "not recorded"),
        f"F1 / EM (SQuAD's, max over aliases) over every question of bench/data ({questions}). *default*: ✓ "
        "today's defaults throughout; *training* today's training with another retriever or combination.\n",
    ]
    base = sorted(
        (r for r in rows if r.get("config") is None),
        key=lambda r: (split_order[r["split"]], retriever_of(r), mode_order[r["mode"]], r["k"]),
    )
    out.append(
        table(
            ["split", "baseline", "retriever", "k", "F1", "EM", "recall@k", "default"],
            [
                [
                    r["split"],
                    r["mode"],
                    retriever_of(r) if r["mode"] != "vanilla" else "—",
                    r["k"] if r["mode"] != "vanilla" else "—",
                    num(r["f1"]),
                    num(r["em"]),
                    num(r["recall"]),
                    mark(r, d),
                ]
                for r in base
            ],
        )
        + "\n"
    )
    trained = [r for r in rows if r.get("config") is not None]
    # top-1, then today's combination, then the others by name
    settings = sorted({setting(r) for r in trained}, key=lambda s: (s[0], s[1] != d["combination"], s[1], s[2]))
    groups = {}
    for r in trained:
        key = (split_order[r["split"]], retriever_of(r), training_name(r["config"]), mode_order[r["mode"]])
        groups.setdefault(key, {})[setting(r)] = r
    lines = []
    for (split, retriever, training, mode), by in sorted(groups.items()):
        first = next(iter(by.values()))
        marks = sorted({mark(r, d) for r in by.values()} - {""}, key=("✓", "training").index)
        lines.append(
            [
                SPLITS[split],
                retriever,
                training,
                first["mode"],
                *[f"{num(by[s]['f1'])} / {num(by[s]['em'])}" if s in by else "" for s in settings],
                " ".join(marks),
            ]
        )
    out.append(
        table(
            ["split", "retriever", "training", "mode", *[f"{setting_name(s)} F1 / EM" for s in settings], "default"],
            lines,
        )
        + "\n"
    )
    return "\n".join(out)


def defaults_section(d, names):
    """dev and test F1 / EM of today's defaults, from whichever sweep file measured them."""
    found = {}
    for name in names:
        for r in read_rows(name):
            if r["mode"] == "vanilla" or (mark(r, d) == "✓" and r["k"] in (1, d["top_k"])):
                found[(r["split"], r["mode"], 1 if r["k"] == 1 else "k")] = (r, name)
    lines = []
    for split in SPLITS:
        for mode in MODE_ORDER:
            one, top = found.get((split, mode, 1)), found.get((split, mode, "k"))
            if one is None and top is None:
                continue
            n = (one or top)[0]["n"]
            files = sorted({f"`{x[1]}`" for x in (one, top) if x is not None})
            lines.append(
                [
                    split,
                    n,
                    mode,
                    *(num(x[0][m]) if x else "—" for x in (one, top) for m in ("f1", "em")),
                    ", ".join(files),
                ]
            )
    c = d["training"]
    return (
        "## Today's defaults on dev and test\n\n"
        f"Training: {training_name(c)} (`TrainConfig()` of prag_core/offline/train_config.py with `prag build`'s "
        f"augmenter and warm-up); retriever: {d['retriever']} (`RETRIEVER`, prag_core/retrieval/retrievers.py); "
        f"serving: top-{d['top_k']}, combination {d['combination']} (T={d['temperature']:g}; "
        "prag_core/answer/config.py). F1 / EM: SQuAD's, max over aliases. "
        "vanilla retrieves nothing; rag puts the retrieved passages in the prompt; prag applies their pairs; "
        "combine does both. Test is for reporting only: nothing was tuned on it.\n\n"
        + table(
            [
                "split",
                "questions",
                "mode",
                "F1 top-1",
                "EM top-1",
                f"F1 top-{d['top_k']}",
                f"EM top-{d['top_k']}",
                "from",
            ],
            lines,
        )
        + "\n"
    )


# ---------------------------------------------------------------- the other files


def augment_section(name):
    rows = sorted(read_rows(name), key=lambda r: (r["split"], r["augmenter"]))
    lines = [
        [
            r["split"],
            r["augmenter"],
            r["docs"],
            r["fallback_docs"],
            r["kept_qa"],
            r["dropped"]["qa_round_trip"],
            r["dropped"]["rewrite_repeat"],
            num(r["augment_cpu_s_per_doc"], 1),
        ]
        for r in rows
    ]
    return (
        f"## `{name}`\n\n"
        + source(name, "not recorded (CPU seconds per document on 2 cores)", "not recorded")
        + "\nWhat the model-written augmentation kept and what its filters dropped (`sweep.py --augment-only`): "
        "documents that still needed cloze pairs, QA pairs kept, QA pairs the round trip dropped, rewrites "
        "dropped for repeating the passage.\n\n"
        + table(
            [
                "split",
                "augmenter",
                "documents",
                "needed cloze pairs",
                "QA kept",
                "dropped: round trip",
                "dropped: repeat",
                "augment CPU s/doc",
            ],
            lines,
        )
        + "\n"
    )


def retrieval_section(name, d):
    data = json.loads((RESULTS / name).read_text())
    recall = [
        [
            split,
            v["n"],
            r + (" (default)" if r == d["retriever"] else ""),
            *(num(v[r][f"recall@{k}"]) for k in (1, 3, 5)),
        ]
        for split, v in sorted(data["recall"].items())
        for r in sorted(k for k in v if k != "n")
    ]
    speed = [
        [corpus, f"{v['documents']:,}", r, num(v["build_s_per_1k"][r], 2), num(v["query_ms"][r], 2)]
        for corpus, v in sorted(data["speed"].items())
        for r in sorted(v["query_ms"])
    ]
    embed = ", ".join(f"{corpus} {num(v['query_embed_ms'], 1)} ms" for corpus, v in sorted(data["speed"].items()))
    return (
        f"## `{name}`\n\n"
        + source(name, f"not recorded ({data['threads']} torch thread(s))", "not recorded")
        + "\nRecall@k of each retriever: the share of questions whose supporting document is in the top k "
        "(paraphrased: questions that share no name with their document).\n\n"
        + table(["question set", "questions", "retriever", "recall@1", "recall@3", "recall@5"], recall)
        + "\n\nIndex build (seconds per 1,000 documents) and query time (ms, one question at a time) on the demo "
        f"corpus and a synthetic one; of which embedding the query: {embed}.\n\n"
        + table(["corpus", "documents", "retriever", "build s/1k docs", "query ms"], speed)
        + "\n"
    )


def serve_section(name):
    data = json.loads((RESULTS / name).read_text())
    rows = sorted(data["rows"], key=lambda r: (r["clients"], r["variant"]))
    lines = [
        [
            r["clients"],
            r["variant"],
            num(r["rps"], 2),
            num(r["p50_s"], 2),
            num(r["p99_s"], 2),
            f"{r['vs_merge']:.2f}×",
            num(r["same_as_merge"], 2),
            num(r["rows_per_batch"], 1),
        ]
        for r in rows
    ]
    soak = data["soak"]
    statuses = ", ".join(f"{code}: {n}" for code, n in sorted(soak["statuses"].items()))
    return (
        f"## `{name}`\n\n"
        + source(
            name,
            f"{data.get('machine', 'not recorded')} ({data['threads']} thread(s) per `prag serve`)",
            data.get("date", "not recorded"),
        )
        + f"\nTwo `prag serve` processes (fused and merge) answering clients in rounds ({data['rounds']} rounds, "
        f"{data['per_client']} requests per client per round): requests per second, latency p50 / p99, "
        "throughput over merge's at the same load, the share of answers equal to merge's, and the mean rows "
        f"decoding together ({data.get('batching', 'fixed')} batching: "
        + (
            "rows join and leave between decode steps; the rows running after each join"
            if data.get("batching") == "continuous"
            else "the rows of each generate call"
        )
        + ").\n\n"
        + table(
            ["clients", "variant", "requests/s", "p50 s", "p99 s", "vs merge", "same as merge", "rows per batch"], lines
        )
        + f"\n\nSoak: {soak['requests']:,} requests (good and malformed) in {soak['seconds']:.0f} s, "
        f"{soak['failed']} failed; statuses {statuses}.\n"
    )


def store_section(name):
    rows = read_rows(name)
    cpus = sorted({r["cpus"] for r in rows})
    loads = [x for r in rows for x in r["load_average"]]
    lines = []
    for r in rows:  # in the order measured: open, lookups, tags(), build per layout
        if r["bench"] == "build":
            per = r["s_per_1000"]
            result = (
                f"{per[0]:.2f} s per 1,000 documents first, {per[-1]:.2f} s last (last / first "
                f"{r['last_over_first']:.2f}, last 3 / first 3 {r['last_3_over_first_3']:.2f}); close "
                f"{r['close_s']:.2f} s; {r['store_mib']:.1f} MiB; flush every {r['batch']}"
            )
        elif "ms_median" in r:
            result = (
                f"{r['ms_first']:.1f} ms first, {r['ms_median']:.1f} ms median; catalog written in "
                f"{r['catalog_written_s']:.1f} s, {r['catalog_bytes_per_document']} bytes per document"
            )
        else:
            result = f"{r['s']:.3f} s" + (f" ({r['found']:,} found)" if "found" in r else "")
        lines.append([r["bench"], r.get("layout", "—"), f"{r['documents']:,}", result])
    return (
        f"## `{name}`\n\n"
        + source(
            name,
            f"{', '.join(map(str, cpus))} CPUs, load average {min(loads):.1f}–{max(loads):.1f} (other jobs running)",
            "not recorded",
        )
        + "\nThe parameter store at scale (`bench/load/store_bench.py`): opening a catalog and looking documents "
        "up, and a build's cost per document as the store grows, in both layouts.\n\n"
        + table(["measurement", "layout", "documents", "result"], lines)
        + "\n"
    )


def serve_ray_section(name):
    sys.path.insert(0, str(RESULTS.parent / "load"))
    from serve_ray_bench import table as replicas_table

    run = json.loads((RESULTS / name).read_text())
    return (
        f"## `{name}`\n\n"
        + source(name, run["machine"], run["date"])
        + f"\n`prag serve --ray --replicas N --threads {run['threads']}` on a local Ray cluster "
        f"(`bench/load/serve_ray_bench.py`): {run['clients']} clients, {run['per_client']} requests each per "
        "round, the demo work directory; 1 replica measured first, then 2, on the same 2 CPUs as the clients, "
        "Ray's proxy and the router. Then the ceiling without Ray: as many plain `prag serve` processes side by "
        "side, the clients split evenly over them.\n\n" + replicas_table(run["rows"]) + "\n"
    )


def scale_section(name):
    rows = read_rows(name)
    lines = []
    for r in rows:
        what = r.get("search") or (f"+{r['added']:,} documents, index reused" if "added" in r else f"k = {r['k']}")
        size = f"{r['size_mb']:,}" if "size_mb" in r else "—"
        build = f"{r['build_s']}" if "build_s" in r else "—"
        recall = num(r.get("recall@10"), 4) if "recall@10" in r else "—"
        latency = (f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}") if "p50_ms" in r else ("—", "—")
        lines.append([r["stage"], f"{r['n']:,}", what, build, size, r["peak_rss_gb"], recall, *latency, r["load1"]])
    dates = sorted({r["date"] for r in rows})
    return (
        f"## `{name}`\n\n"
        + source(name, f"{rows[0]['cpus']} CPUs ({rows[0]['machine']}), 1 thread per query", ", ".join(dates))
        + "\nRetrieval at 100k and 1M synthetic passages (`bench/load/scale_bench.py`, which says how they are "
        "generated): build time, size on disk, peak memory of the stage's process, recall@10 against exact "
        "search, query latency, and the load average when the stage ended.\n\n"
        + table(
            ["stage", "passages", "what", "build s", "MB on disk", "peak GB", "recall@10", "p50 ms", "p99 ms", "load"],
            lines,
        )
        + "\n"
    )


def suites_section(d):
    from report import e2e_section, kernel_section, load, offline_section, update_section
    from report import table as report_table

    info, commit, when, rows = load(RESULTS / f"{SUITES_RUN}.json")
    targets = []
    for section in (kernel_section, update_section, e2e_section, offline_section):
        section(rows, targets)
    machine = (
        f"{info.get('cpu_model')} ({info.get('cpu_count')} cores), {info.get('memory_gib')} GiB, GPU: "
        f"{info.get('gpu') or 'none'}; torch {info.get('torch')} on {info.get('torch_threads')} thread(s)"
    )
    note = f" Note: {info['note']}" if info.get("note") else ""
    return (
        f"## `{SUITES_RUN}.json` and `{SUITES_RUN}.md`\n\n"
        + source(f"{SUITES_RUN}.json", machine, f"{when[:10]} (commit {commit.get('id', '?')[:10]})")
        + f"\nThe pytest-benchmark suites (`bench/suites/`: kernel, update cost, end to end, offline cost).{note} "
        f"Every table: [bench/results/{SUITES_RUN}.md](../bench/results/{SUITES_RUN}.md). The targets, "
        "recomputed from the JSON with today's bounds (`TARGETS` in bench/suites/report.py):\n\n"
        + report_table(["target", "result"], targets)
        + "\n"
    )


def compile_section(name):
    text = (RESULTS / name).read_text()
    title = text.splitlines()[0].lstrip("# ").strip()
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return (
        f"## `{name}`\n\n"
        + source(name, "any (Triton compiles for sm_80 and sm_90 without a GPU)", "not recorded")
        + f"\n{title}. Written by tests/test_kernel_compile.py; per autotune config, the worst registers, "
        "shared memory, stack and narrowest W/B/A load (bytes a thread) over the specialisations it can be picked "
        "for, and whether the PTX pipelines its K-loop (cp.async) and, on sm_90, uses wgmma.\n\n"
        + "\n".join(rows)
        + "\n"
    )


def pool_section(name):
    r = json.loads((RESULTS / name).read_text())
    rows = [
        ("decode step, 3 documents (s)", f"{r['step_s']:.4f}"),
        ("load one document into the pool (s)", f"{r['load_s']:.5f}"),
        ("load / step (target ≤ 0.05)", f"{r['load_over_step']:.3f}"),
        ("step with the pool and no document / plain step", f"{r['pool_over_plain']:.3f}"),
    ]
    return (
        f"## `{name}`\n\n"
        + source(name, f"{r['machine']}, {r['cpus']} CPUs, load average {r['loadavg']}", "not recorded")
        + f"\nbench/load/pool_bench.py: {r['model']}, {r['slots']} slots at rank {r['rank']}, {r['threads']} "
        f"thread(s), a KV cache of {r['context']} tokens, torch {r['torch']}.\n\n"
        + table(["measure", "value"], rows)
        + "\n"
    )


def host_cost_section(name):
    r = json.loads((RESULTS / name).read_text())
    rows = [(row["shape"], row["rows"], ", ".join(row["kernels"]), f"{row['us']:.1f}") for row in r["rows"]]
    worst = max(row["us"] for row in r["rows"])
    return (
        f"## `{name}`\n\n"
        + source(name, f"{r['machine']}, load average {r['loadavg']}", r["date"])
        + "\nbench/gpu/host_cost.py: the Python work of one decode call of the fused op as the injection layer makes "
        "it (bf16, M = 1, three rank-2 documents, meta-device tensors, the Triton launch and the vendor GEMM stubbed; "
        f"the fastest of 5 runs of {r['calls']} calls; torch {r['torch']}, Python {r['python']}). Target ≤ "
        f"{r['target_us']:.0f} µs: {'met' if worst <= r['target_us'] else 'not met'} ({worst:.1f} µs at worst).\n\n"
        + table(["shape", "rows", "launches (stubbed)", "µs per call"], rows)
        + "\n"
    )


def dispatch_section():
    """What the shipped dispatch table holds: the GPU runs that wrote it, or the statement that none has."""
    raw = json.loads(DISPATCH_TABLE.read_text())
    name = DISPATCH_TABLE.relative_to(ROOT)
    head = f"## `{name.name}`\n\nFrom `{name}`, written by `make bench-gpu` (bench/gpu/kernel_report.py). "
    if not raw["devices"]:
        return head + (
            "No GPU run has written an entry: every call on CUDA takes the rule (the delta path, "
            "prag_kernels.dispatch). The GPU targets of issue 34 (the chosen path ≤ 1.05× F.linear at M ≤ 16, "
            "≤ 1.10× with per-row sets and at M = 4096, faster than unfused torch and merge at every M; decode "
            "tokens/s with three documents per row ≥ 0.9× the base model's and ≥ 2× PEFT's mixed-adapter batch) "
            "are **not measured**.\n"
        )
    rows = []
    for device, d in sorted(raw["devices"].items()):
        paths = [e["path"] for e in d["entries"]]
        rows.append(
            (
                device,
                ".".join(map(str, d["capability"])),
                d.get("source", "—"),
                len(paths),
                paths.count("fused"),
                paths.count("delta"),
            )
        )
    return (
        head
        + "Per device, the keys measured and the path each chose:\n\n"
        + table(["device", "capability", "source", "keys", "fused", "delta"], rows)
        + "\n"
    )


def gpu_section(name):
    """A GPU run, kept as the markdown it was recorded in (card, driver and versions in its title or first
    paragraph), up to its "## Details" (the per-check and per-candidate tables stay in the file), headings one
    level down."""
    title, _, body = (RESULTS / name).read_text().partition("\n")
    body = body.split("\n## Details", 1)[0].replace("\n## ", "\n### ")
    return f"## `{name}`\n\n" + source(name, "the card it names", "in its title") + f"\n{title.lstrip('# ')}.\n{body}"


def hops_section(name):
    rows = read_rows(name)
    types = ("single", "multihop", "comparison")
    lines = [
        [
            r["split"],
            r["variant"],
            f"{r['query']} / {r['prompt']} / {r.get('rule') or 'top'}" if r["max_hops"] > 1 else "—",
            r["mode"],
            num(r["f1"]),
            *(num((r.get("by_type") or {}).get(t, {}).get("f1")) for t in types),
            num(r["hops"], 2),
            num(r["latency_s"], 2),
        ]
        for r in rows
    ]
    return (
        f"## `{name}`\n\n"
        + source(name, rows[0]["machine"].split(", load")[0], rows[0]["date"])
        + "\nMulti-hop Retrieve-Update-Generate (`bench/experiments/hops.py`), every default but the hops, batches of "
        f"{rows[0]['batch_size']}: F1 over all questions and per type, mean hops per question, seconds per "
        "question (its share of its batches' wall time). Variant switches: what the next hop retrieves with / the "
        "prompt of the next hop / when a question hops.\n\n"
        + table(
            [
                "split",
                "variant",
                "query / prompt / rule",
                "mode",
                "F1",
                *(f"F1 {t}" for t in types),
                "hops",
                "s/question",
            ],
            lines,
        )
        + "\n"
    )


# ---------------------------------------------------------------- the file


def render():
    d = defaults()
    sweeps = ("sweep.jsonl", "sweep_retrievers.jsonl")
    sections = [(n, sweep_section(n, d)) for n in sweeps]
    sections += [
        ("augment_filters.jsonl", augment_section("augment_filters.jsonl")),
        ("retrieval.json", retrieval_section("retrieval.json", d)),
        ("serve.json", serve_section("serve.json")),
        ("store.jsonl", store_section("store.jsonl")),
        (f"{SUITES_RUN}.json", suites_section(d)),
        ("kernel-compile.md", compile_section("kernel-compile.md")),
        ("pool.json", pool_section("pool.json")),
        ("hops.jsonl", hops_section("hops.jsonl")),
        ("scale.jsonl", scale_section("scale.jsonl")),
        ("serve_ray.json", serve_ray_section("serve_ray.json")),
        ("host_cost.json", host_cost_section("host_cost.json")),
        ("dispatch_table.json", dispatch_section()),
        *((p.name, gpu_section(p.name)) for p in sorted(RESULTS.glob("gpu-*.md"))),
    ]
    raw_gpu = {p.with_suffix(".json").name for p in RESULTS.glob("gpu-*.md")}  # their numbers are the markdown's
    covered = {n for n, _ in sections} | {f"{SUITES_RUN}.md"} | raw_gpu
    left = sorted(
        p.name
        for p in RESULTS.iterdir()
        if p.is_file() and p.suffix in (".json", ".jsonl", ".md") and p.name not in covered
    )
    if left:
        raise SystemExit(f"results_doc: no section for {', '.join(left)}; add one to bench/results_doc.py")
    contents = "\n".join(f"- [`{n}`](#{anchor(n)})" for n, _ in sections)
    return (
        "# Results\n\n"
        "Generated by `python bench/results_doc.py` from the raw results in `bench/results/`; do not edit by "
        "hand (tests/test_results_doc.py fails when this file and the raw results disagree). Retired runs "
        "(`bench/results/archive/`) are not included: their numbers are not comparable.\n\n"
        + defaults_section(d, sweeps)
        + "\n## Contents\n\n"
        + contents
        + "\n\n"
        + "\n".join(text for _, text in sections)
    )


def anchor(name):
    """GitHub's heading anchor of "## `name`" (and of the suites' heading)."""
    heading = f"{name} and {SUITES_RUN}.md" if name == f"{SUITES_RUN}.json" else name
    return "".join(c for c in heading.lower().replace(" ", "-") if c.isalnum() or c in "-_")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(), encoding="utf-8")
    print(args.out)


if __name__ == "__main__":
    main()

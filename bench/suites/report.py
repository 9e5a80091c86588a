"""Turn one pytest-benchmark JSON file into bench/results/<machine>.md and its PNG plots.

    python bench/suites/report.py RESULTS.json [--out bench/results] [--gpu-table FILE]

Every number is a median over rounds with its spread as [q1–q3] (the interquartile range).
Ratios come from one run: for variants timed interleaved (common.interleave) the median of
per-round ratios, so a slow neighbour on a shared machine shifts both sides alike; otherwise
the ratio of medians. Each target of issue 7 (and the CPU target of issue 3; their bounds are TARGETS,
at the top) is stated met / not met with its numbers. Suites with no results in the file are listed as not run.
"""

import argparse
import json
import re
import shutil
import statistics
from pathlib import Path

# The targets the report states met / not met (issue 3's CPU path, issue 7's). A time ratio must stay at or
# under its bound ("< 1" for the strict ones), a speed-up must reach it. Change a target here, nowhere else.
TARGETS = {
    "kernel_fused_over_base": 1.15,  # issue 3, CPU path: fused ≤ 1.15× F.linear alone, M ≤ 16
    "question_fused_over_vanilla": 1.1,  # issue 7: a whole question with documents ≤ 1.1× without (and the plots)
    "question_fused_over_merge": 1.0,  # issue 7: whole question, fused < merge (strict)
    "prag_over_rag": 1.0,  # issue 7: demo corpus, prag's whole-question time < rag's (strict)
    "batched_training_speedup": 1.5,  # issue 7: batched training ≥ 1.5× the documents/s of sequential
    "reference_training_speedup": 10.0,  # issue 7: ≥ 10× faster per document than the padded reference recipe
}

MODES = ("vanilla", "rag", "prag", "combine")
COLORS = {"merge": "tab:red", "fused": "tab:blue", "vanilla": "tab:gray"}


# ---------------------------------------------------------------- reading


def load(path):
    """(machine_info, commit_info, datetime, rows). A row is a benchmark's extra_info plus its stats; a
    benchmark of interleaved variants (common.interleave) gives one row per variant, with its samples, its
    statistics computed from them, and the benchmark's name under "bench" (for paired ratios)."""
    data = json.loads(Path(path).read_text())
    rows = []
    for b in data["benchmarks"]:
        common = {k: v for k, v in b["extra_info"].items() if k != "variants"}
        if "variants" not in b["extra_info"]:
            rows.append({**common, "stats": b["stats"]})
        for fields in b["extra_info"].get("variants", {}).values():
            rows.append({**common, **fields, "stats": sample_stats(fields["samples"]), "bench": b["fullname"]})
    return data["machine_info"], data.get("commit_info", {}), data.get("datetime", ""), rows


def sample_stats(samples):
    """median, q1, q3 and rounds of a list of seconds (pytest-benchmark's quartile method)."""
    q1, _, q3 = statistics.quantiles(samples, n=4) if len(samples) > 1 else samples * 3
    return {"median": statistics.median(samples), "q1": q1, "q3": q3, "rounds": len(samples)}


def machine_name(info):
    """File-name slug of the machine: the GPU's name, else the CPU model and core count."""
    name = info.get("gpu") or f"{info.get('cpu_model', 'cpu')}-{info.get('cpu_count', '?')}cpu"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug + ("-smoke" if info.get("smoke") else "")


def pick(rows, **where):
    """The rows whose fields equal `where`."""
    return [r for r in rows if all(r.get(k) == v for k, v in where.items())]


def one(rows, **where):
    found = pick(rows, **where)
    return found[0] if found else None


def median(row):
    return row["stats"]["median"] if row else None


# ---------------------------------------------------------------- formatting


def fmt_s(seconds):
    if seconds is None:
        return "–"
    for unit, factor in (("s", 1), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= factor:
            return f"{seconds / factor:.3g} {unit}"
    return f"{seconds / 1e-6:.3g} µs"


def cell(row):
    """'median [q1–q3]' of a benchmark row (the median alone after a single round)."""
    if row is None:
        return "–"
    s = row["stats"]
    spread = f" [{fmt_s(s['q1'])}–{fmt_s(s['q3'])}]" if s["rounds"] > 1 else ""
    return fmt_s(s["median"]) + spread


def ratio(a, b):
    return a / b if a is not None and b else None


def paired(a, b):
    """Time of row a over row b: the median of per-round ratios when both are variants of one interleaved
    benchmark (same rounds, same moment), else the ratio of their medians."""
    if a is None or b is None:
        return None
    if a.get("bench") is not None and a.get("bench") == b.get("bench"):
        return statistics.median(x / y for x, y in zip(a["samples"], b["samples"]))
    return ratio(median(a), median(b))


def fmt_x(r):
    return "–" if r is None else f"{r:.2f}×"


def verdict(met, detail):
    return ("met" if met else "**not met**") + f" ({detail})"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


# ---------------------------------------------------------------- suites


def kernel_section(rows, targets):
    rows = pick(rows, suite="kernel")
    if not rows:
        return "## 1. Kernel (CPU)\n\nNot run.\n"
    body = []
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    for shape in shapes:
        mine = pick(rows, shape=shape)
        body.append(
            f"**{shape}** FFN projection {mine[0]['in_features']} → {mine[0]['out_features']} "
            f"(gate/up shape), rank {mine[0]['rank']} per document\n"
        )
        lines = []
        for m in sorted({r["m"] for r in mine}):
            for docs in sorted({r["docs"] for r in mine}):
                base, fused, cat, unfused = (
                    one(mine, m=m, docs=docs, provider=p) for p in ("base", "fused", "cat", "unfused")
                )
                lines.append(
                    [
                        m,
                        docs,
                        cell(base),
                        cell(fused),
                        cell(cat),
                        cell(unfused),
                        fmt_x(paired(fused, base)),
                        fmt_x(paired(cat, base)),
                        fmt_x(paired(unfused, base)),
                        fmt_x(paired(fused, unfused)),
                    ]
                )
        body.append(
            table(
                [
                    "M",
                    "docs",
                    "base F.linear",
                    "fused",
                    "cat entry",
                    "unfused torch",
                    "fused/base",
                    "cat/base",
                    "unfused/base",
                    "fused/unfused",
                ],
                lines,
            )
        )
    first = shapes[0]
    for m in sorted({r["m"] for r in pick(rows, shape=first) if r["m"] <= 16}):
        docs = 3 if pick(rows, docs=3) else max(r["docs"] for r in rows)
        r = paired(
            one(rows, shape=first, m=m, docs=docs, provider="fused"),
            one(rows, shape=first, m=m, docs=docs, provider="base"),
        )
        bound = TARGETS["kernel_fused_over_base"]
        targets.append(
            (
                f"issue 3, CPU path: fused ≤ {bound:g}× base linear, {first}, M={m}, {docs} docs",
                verdict(r <= bound, f"{r:.2f}×"),
            )
        )
    return (
        "## 1. Kernel (CPU)\n\nOne FFN projection, x (M, in) → (M, out), time per call. *base*: `F.linear(x, W)` "
        "alone; *fused*: `prag_kernels.fused_lora_linear(x, W, None, A, B, α)` with the documents' (D, ·, r) "
        "stacks (on the CPU its torch path: three GEMMs); *cat entry*: `fused_lora_linear_cat` with A_cat/B_cat "
        "stacked beforehand (what a caller that caches stacks pays); *unfused torch*: "
        "`F.linear(x, W) + α·(x B_cat) A_catᵀ` as separate ops on the same pre-stacked A_cat/B_cat. "
        "The four run interleaved; ratios are medians of per-round ratios.\n\n" + "\n\n".join(body) + "\n"
    )


def update_section(rows, targets):
    rows = pick(rows, suite="update")
    if not rows:
        return "## 2. Update cost: merge vs fused\n\nNot run.\n"
    models = list(dict.fromkeys(r["model"] for r in rows))
    main_docs = 3 if pick(rows, docs=3) else max(r["docs"] for r in rows)
    upd, whole = [], []
    for name in models:
        mine = pick(rows, model=name, docs=main_docs)
        r0 = mine[0]
        merge, fused = (one(mine, kind="update", method=m) for m in ("merge", "fused"))
        per_layer = ratio(median(merge), r0["layers_used"])
        layers = f"{r0['layers_used']}" + ("" if r0["layers_used"] == r0["layers_full"] else f" of {r0['layers_full']}")
        upd.append(
            [
                name,
                layers,
                f"{r0['ffn_params_per_layer'] / 1e6:.3g} M",
                cell(merge),
                cell(fused),
                fmt_x(paired(merge, fused)),
                fmt_s(per_layer),
                fmt_s(per_layer * r0["layers_full"] if per_layer else None),
            ]
        )
        van, qf, qm = (one(mine, kind="question", method=m) for m in ("vanilla", "fused", "merge"))
        whole.append(
            [
                name,
                layers,
                cell(van),
                cell(qf),
                cell(qm),
                fmt_x(paired(qf, van)),
                fmt_x(paired(qm, van)),
                fmt_x(paired(qf, qm)),
            ]
        )
    out = [
        f"## 2. Update cost: merge vs fused ({main_docs} documents, rank 2)\n",
        "*update*: apply the documents and take them off again. merge = `W += α·A_cat B_catᵀ` on every FFN "
        "projection, then the bit-exact restore (`merged_documents`); fused = enter and leave `use_documents` "
        "(weights untouched). Random models keep the FFN shape of the named model but only the layers shown "
        "(and a 32k vocabulary); *full depth* extrapolates merge's per-layer cost to the real layer count.\n",
        table(
            [
                "model",
                "layers",
                "FFN params/layer",
                "merge+restore",
                "fused activation",
                "merge/fused",
                "merge per layer",
                "merge, full depth (extrapolated)",
            ],
            upd,
        ),
        f"\n*whole question*: update + greedy generation of exactly {rows[0]['new_tokens']} tokens + restore; "
        "vanilla = the same generation without documents. The three run interleaved, and the ratios are "
        "medians of per-round ratios.\n",
        table(["model", "layers", "vanilla", "fused", "merge", "fused/vanilla", "merge/vanilla", "fused/merge"], whole),
    ]
    sweep = sorted({r["docs"] for r in pick(rows, model=models[0])})
    if len(sweep) > 1:
        lines = []
        for d in sweep:
            m = {
                (k, meth): one(rows, model=models[0], kind=k, method=meth, docs=d)
                for k, meths in (("update", ("merge", "fused")), ("question", ("vanilla", "merge", "fused")))
                for meth in meths
            }
            lines.append(
                [
                    d,
                    cell(m["update", "merge"]),
                    cell(m["update", "fused"]),
                    cell(m["question", "merge"]),
                    cell(m["question", "fused"]),
                    fmt_x(paired(m["question", "merge"], m["question", "vanilla"])),
                    fmt_x(paired(m["question", "fused"], m["question", "vanilla"])),
                ]
            )
        out += [
            f"\nAgainst the number of documents, on {models[0]}:\n",
            table(
                [
                    "docs",
                    "update merge",
                    "update fused",
                    "question merge",
                    "question fused",
                    "merge/vanilla",
                    "fused/vanilla",
                ],
                lines,
            ),
        ]
    first = pick(rows, model=models[0], kind="question", docs=main_docs)
    van, qf, qm = (one(first, method=m) for m in ("vanilla", "fused", "merge"))
    if van and qf and qm:
        bound = TARGETS["question_fused_over_vanilla"]
        targets.append(
            (
                f"{models[0]}, whole question: fused ≤ {bound:g}× vanilla",
                verdict(
                    paired(qf, van) <= bound, f"{fmt_s(median(qf))} vs {fmt_s(median(van))}: {paired(qf, van):.2f}×"
                ),
            )
        )
        targets.append(
            (
                f"{models[0]}, whole question: fused < merge",
                verdict(
                    paired(qf, qm) < TARGETS["question_fused_over_merge"],
                    f"{fmt_s(median(qf))} vs {fmt_s(median(qm))}: {paired(qf, qm):.2f}×",
                ),
            )
        )
    return "\n".join(out) + "\n"


def e2e_section(rows, targets):
    rows = pick(rows, suite="e2e")
    if not rows:
        return "## 3. End to end on the demo corpus\n\nNot run.\n"
    modes = pick(rows, kind="mode")
    vanilla = one(modes, mode="vanilla")
    per_mode = [
        [
            r["mode"],
            r["update"] if r["mode"] in ("prag", "combine") else "–",
            f"{r['prompt_tokens']:.0f}",
            f"{r['answer_tokens']:.1f}",
            cell(r),
            fmt_x(paired(r, vanilla)),
        ]
        for r in modes
    ]
    out = [
        "## 3. End to end on the demo corpus\n",
        f"Per question through `Pipeline.answer` (retrieve top-{rows[0]['top_k']}, update, generate until the "
        f"answer's first sentence end, restore), {rows[0]['model']}; each question asked in every mode in turn. "
        "*prompt tokens*: mean prompt length; *answer tokens*: mean tokens of the cut answer.\n",
        table(["mode", "update", "prompt tokens", "answer tokens", "seconds per question", "vs vanilla"], per_mode),
    ]
    thr = pick(rows, kind="throughput")
    batch1 = one(thr, update="fused", batch=1)
    lines = [
        [
            r["update"],
            r["batch"],
            r["questions"],
            cell(r),
            f"{r['questions'] / median(r):.2f}",
            fmt_x(paired(batch1, r)),
        ]
        for r in thr
    ]
    if lines:
        out += [
            "\n*Batched serving*: the same questions answered `batch` at a time in one `generate` call, each "
            "row with its own retrieved documents (per-row fused path); merge can only answer one at a time.\n",
            table(["update", "batch", "questions", "time for all", "questions/s", "speed vs fused batch 1"], lines),
        ]
    prag, rag = one(modes, mode="prag", update="fused"), one(modes, mode="rag")
    if prag and rag:
        targets.append(
            (
                "demo corpus: prag whole-question time < rag's",
                verdict(
                    paired(prag, rag) < TARGETS["prag_over_rag"],
                    f"{fmt_s(median(prag))} vs {fmt_s(median(rag))}: {paired(prag, rag):.2f}×; "
                    f"prompts {prag['prompt_tokens']:.0f} vs {rag['prompt_tokens']:.0f} tokens",
                ),
            )
        )
    return "\n".join(out) + "\n"


def offline_section(rows, targets):
    rows = pick(rows, suite="offline")
    if not rows:
        return "## 4. Offline cost per document\n\nNot run.\n"
    out = ["## 4. Offline cost per document\n"]
    aug = one(rows, kind="augment")
    if aug:
        out.append(
            f"*Augmentation* ({aug['n_rewrites']} rewrite + {aug['n_qa']} QA pairs per document, written by "
            f"{aug['model']}; documents: {aug['docs']}, in one batch; retries: {aug['retries']}; "
            f"fell back to the deterministic augmenter: {aug['fallbacks']}): {cell(aug)} for all, "
            f"**{fmt_s(median(aug) / aug['docs'])} per document**.\n"
        )
    train = sorted(pick(rows, kind="train"), key=lambda r: r["group"])
    ref = one(rows, kind="reference")
    lines, seq = [], None
    for r in train:
        per_doc = median(r) / r["docs"]
        seq = per_doc if r["group"] == 1 else seq
        lines.append(
            [
                f"G = {r['group']}" + (" (sequential)" if r["group"] == 1 else " (batched)"),
                r["docs"],
                cell(r),
                fmt_s(per_doc),
                f"{1 / per_doc:.3f}",
                fmt_x(ratio(seq, per_doc)),
            ]
        )
    if ref:
        per_doc_ref = median(ref) / ref["steps"] * ref["sequences_per_doc"]
        lines.append(
            [
                f"PRAG reference shape (batch 1, padded to {ref['pad_to']})",
                "–",
                f"{cell(ref)} for {ref['steps']} step(s)",
                f"{fmt_s(per_doc_ref)} (extrapolated)",
                f"{1 / per_doc_ref:.4f}",
                fmt_x(ratio(seq, per_doc_ref)),
            ]
        )
    if train:
        t0 = train[0]
        out += [
            f"*Training*, one epoch over each document's {t0['sequences_per_doc']} PRAG sequences (mean "
            f"{t0['mean_tokens']:.0f} tokens, unpadded), rank {t0['rank']}, {t0['model']}; G documents per batch, "
            "each row updating only its own pair. Seconds per document scale linearly with the epochs "
            f"(the build's default is {t0['default_epochs']}).\n",
            table(
                ["training", "documents", "time", "s per doc per epoch", "docs/s (one epoch)", "speed vs sequential"],
                lines,
            ),
        ]
        batched = [r for r in train if r["group"] > 1]
        if batched and seq:
            top = max(batched, key=lambda r: r["docs"] / median(r))
            gain = seq / (median(top) / top["docs"])
            goal = TARGETS["batched_training_speedup"]
            targets.append(
                (
                    f"batched training (best G = {top['group']}) ≥ {goal:g}× the documents/s of sequential",
                    verdict(gain >= goal, f"{gain:.2f}×"),
                )
            )
        if ref:
            best = min(median(r) / r["docs"] for r in train)
            goal = TARGETS["reference_training_speedup"]
            targets.append(
                (
                    f"our per-document training ≥ {goal:g}× faster than the padded reference recipe "
                    "(same sequences, one epoch each; our best G)",
                    verdict(
                        per_doc_ref / best >= goal, f"{fmt_s(best)} vs {fmt_s(per_doc_ref)}: {per_doc_ref / best:.1f}×"
                    ),
                )
            )
            out.append(
                f"\nThe reference shape is timed for {ref['steps']} optimizer step(s) (one sequence each, "
                f"padded to {ref['pad_to']} tokens, loss on every position) and extrapolated to "
                f"{ref['sequences_per_doc']} sequences per document.\n"
            )
    size = one(rows, kind="store")
    if size:
        out.append(
            f"*Bytes per document on disk*: {size['bytes']:,} bytes ({size['bytes'] / 2**20:.2f} MiB; "
            f"rank {size['rank']}, {size['projections']} projections, {size['dtype']}); saving one takes "
            f"{cell(size)}.\n"
        )
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- plots


def plot_model_size(rows, path):
    """Update cost per layer (merge vs fused) against FFN parameters per layer, and whole-question ratios."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = pick(rows, suite="update")
    models = list(dict.fromkeys(r["model"] for r in rows))
    docs = 3 if pick(rows, docs=3) else max(r["docs"] for r in rows)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, marker in (("merge", "o"), ("fused", "s")):
        pts = [
            (r["ffn_params_per_layer"] / 1e6, median(r) / r["layers_used"] * 1e3, name)
            for name in models
            for r in pick(rows, model=name, kind="update", method=method, docs=docs)
        ]
        left.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=COLORS[method], label=method)
        if method == "merge":
            for x, y, name in pts:
                left.annotate(name, (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    left.margins(x=0.15, y=0.25)  # room for the labels
    left.set(
        xscale="log",
        yscale="log",
        xlabel="FFN parameters per layer (millions)",
        ylabel="update cost per layer (ms)",
        title=f"apply {docs} docs + restore",
    )
    left.legend()
    width = 0.38
    for i, method in enumerate(("fused", "merge")):
        vals = [
            paired(
                one(rows, model=n, kind="question", method=method, docs=docs),
                one(rows, model=n, kind="question", method="vanilla", docs=docs),
            )
            for n in models
        ]
        right.bar([k + (i - 0.5) * width for k in range(len(models))], vals, width, label=method, color=COLORS[method])
    right.axhline(1.0, color="gray", lw=0.8)
    bound = TARGETS["question_fused_over_vanilla"]
    right.axhline(bound, color="gray", lw=0.8, ls="--", label=f"{bound:g}× target")
    right.set_xticks(range(len(models)), models, fontsize=8)
    right.set(ylabel="whole question / vanilla", title=f"update + {rows[0]['new_tokens']} tokens + restore")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_documents(rows, path):
    """Update cost and whole-question time against the number of documents, on the sweep's model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = pick(rows, suite="update")
    name = rows[0]["model"]
    mine = pick(rows, model=name)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, marker in (("merge", "o"), ("fused", "s")):
        pts = sorted((r["docs"], median(r) * 1e3) for r in pick(mine, kind="update", method=method))
        left.plot(*zip(*pts), marker=marker, color=COLORS[method], label=method)
        pts = sorted(
            (r["docs"], paired(r, one(mine, kind="question", method="vanilla", docs=r["docs"])))
            for r in pick(mine, kind="question", method=method)
        )
        right.plot(*zip(*pts), marker=marker, color=COLORS[method], label=method)
    right.axhline(1.0, color=COLORS["vanilla"], lw=0.8)
    bound = TARGETS["question_fused_over_vanilla"]
    right.axhline(bound, color=COLORS["vanilla"], lw=0.8, ls="--", label=f"{bound:g}× target")
    left.set(xlabel="documents (rank 2 each)", ylabel="ms", title=f"{name}: apply + restore", yscale="log")
    right.set(
        xlabel="documents (rank 2 each)",
        ylabel="whole question / vanilla",
        title=f"{name}: update + {mine[0]['new_tokens']} tokens + restore",
    )
    right.set_ylim(bottom=0)
    for axis in (left, right):
        axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- the file


def header(info, commit, when):
    gpu = info.get("gpu") or "none"
    note = info.get("note") or ""
    return (
        f"- Machine: {info.get('cpu_model')} ({info.get('cpu_count')} cores visible), "
        f"{info.get('memory_gib')} GiB RAM, GPU: {gpu}\n"
        f"- torch {info.get('torch')} ({info.get('torch_threads')} threads, pinned for every suite), "
        f"triton {info.get('triton')}, transformers {info.get('transformers')}, "
        f"Python {info.get('python_version')}\n"
        f"- Run: {when}, commit {commit.get('id', '?')[:10]}{' (dirty tree)' if commit.get('dirty') else ''}"
        f"{', SMOKE MODE (tiny shapes, one round: not a measurement)' if info.get('smoke') else ''}\n"
        + (f"- Note: {note}\n" if note else "")
        + "- Cells: median [q1–q3] over rounds. Ratios: the median of per-round ratios where the variants ran "
        "interleaved (suites 1-3), else the ratio of medians (suite 4); always within this one run.\n"
    )


def write_report(json_path, out_dir, gpu_table=None):
    """Write <machine>.md, <machine>.json and the PNGs into out_dir; returns the markdown path."""
    info, commit, when, rows = load(json_path)
    name = machine_name(info)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = []
    sections = [kernel_section(rows, targets)]
    if gpu_table and Path(gpu_table).is_file():
        sections.append(
            "### 1b. Kernel on the GPU (bench/gpu/kernel_report.py)\n\n" + Path(gpu_table).read_text().strip() + "\n"
        )
    sections += [update_section(rows, targets), e2e_section(rows, targets), offline_section(rows, targets)]
    plots = []
    if pick(rows, suite="update", kind="update"):
        plot_model_size(rows, out_dir / f"{name}-model-size.png")
        plot_documents(rows, out_dir / f"{name}-documents.png")
        plots = [
            f"![merge vs fused against model size]({name}-model-size.png)",
            f"![merge vs fused against documents]({name}-documents.png)",
        ]
    summary = table(["target", "result"], targets) if targets else "No target could be evaluated (suites not run)."
    text = (
        f"# prag benchmarks: {name}\n\n"
        + header(info, commit, when)
        + "\n## Targets\n\n"
        + summary
        + "\n\n"
        + "\n".join(sections)
        + ("\n## Plots\n\n" + "\n\n".join(plots) + "\n" if plots else "")
    )
    md = out_dir / f"{name}.md"
    md.write_text(text)
    if Path(json_path).resolve() != (out_dir / f"{name}.json").resolve():
        shutil.copyfile(json_path, out_dir / f"{name}.json")
    return md


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="pytest-benchmark --benchmark-json output")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results"))
    parser.add_argument("--gpu-table", help="markdown of bench/gpu/kernel_report.py to include")
    args = parser.parse_args()
    print(write_report(args.json, args.out, args.gpu_table))


if __name__ == "__main__":
    main()

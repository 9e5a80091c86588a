#!/usr/bin/env python3
"""Check the invented dev/test knowledge bases in bench/data (stdlib only, fast).

Usage: python3 bench/data/check_data.py
Exit status 1 if any error is found; warnings are printed but do not fail.
"""

import json
import os
import re
import sys
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
DEMO = os.path.join(HERE, "..", "..", "prag_core", "data", "demo_corpus.jsonl")
SPLITS = ("dev", "test")
TYPES = ("single", "multihop", "comparison")
MIN_WORDS, MAX_WORDS = 60, 130
MIN_DOCS, MIN_QUESTIONS = 24, 64
NGRAM = 7  # a single question sharing this many consecutive words with its document is a copy

errors = []
warnings = []


def err(msg):
    errors.append(msg)


def warn(msg):
    warnings.append(msg)


def words(s):
    return re.findall(r"[a-z0-9']+", s.lower())


def load(path, fields):
    rows = []
    if not os.path.exists(path):
        err(f"{path}: missing")
        return rows
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                err(f"{path}:{n}: blank line")
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                err(f"{path}:{n}: invalid JSON ({e})")
                continue
            if not isinstance(row, dict):
                err(f"{path}:{n}: not an object")
                continue
            ok = True
            for name, typ in fields.items():
                if name not in row:
                    err(f"{path}:{n}: missing field {name!r}")
                    ok = False
                elif not isinstance(row[name], typ):
                    err(f"{path}:{n}: field {name!r} should be {typ.__name__}")
                    ok = False
            if ok:
                rows.append(row)
    return rows


def strip_the(s):
    s = s.strip().lower()
    return s[4:] if s.startswith("the ") else s


def check_split(split):
    cpath = os.path.join(HERE, f"{split}_corpus.jsonl")
    qpath = os.path.join(HERE, f"{split}_qa.jsonl")
    docs = load(cpath, {"id": str, "title": str, "text": str})
    qs = load(qpath, {"id": str, "question": str, "answers": list, "docs": list, "type": str})

    by_id = {}
    for d in docs:
        if d["id"] in by_id:
            err(f"{split} corpus: duplicate id {d['id']}")
        by_id[d["id"]] = d
        if not re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)*", d["id"]):
            err(f"{split} corpus: id {d['id']!r} is not snake_case")
        nw = len(d["text"].split())
        if not MIN_WORDS <= nw <= MAX_WORDS:
            err(f"{split} corpus: {d['id']} has {nw} words (want {MIN_WORDS}-{MAX_WORDS})")
    titles = Counter(d["title"].lower() for d in docs)
    for t, c in titles.items():
        if c > 1:
            err(f"{split} corpus: title {t!r} used {c} times")

    seen = set()
    types = Counter()
    for i, q in enumerate(qs, 1):
        qid = q["id"]
        if qid in seen:
            err(f"{split} qa: duplicate id {qid}")
        seen.add(qid)
        if not re.fullmatch(rf"{split}-q\d{{3,}}", qid):
            err(f"{split} qa: id {qid!r} should look like {split}-q001")
        t = q["type"]
        types[t] += 1
        if t not in TYPES:
            err(f"{split} qa {qid}: unknown type {t!r}")
            continue
        ans = q["answers"]
        if not ans or not all(isinstance(a, str) and a.strip() for a in ans):
            err(f"{split} qa {qid}: answers must be non-empty strings")
            continue
        if len(set(a.lower() for a in ans)) != len(ans):
            warn(f"{split} qa {qid}: repeated alias")
        if len(ans[0].split()) > 4:
            warn(f"{split} qa {qid}: first answer longer than 4 words: {ans[0]!r}")
        ids = q["docs"]
        missing = [d for d in ids if d not in by_id]
        if missing:
            err(f"{split} qa {qid}: unknown docs {missing}")
            continue
        if len(set(ids)) != len(ids):
            err(f"{split} qa {qid}: repeated doc id")
        want = 1 if t == "single" else 2
        if (t == "single" and len(ids) != 1) or (t != "single" and len(ids) < 2):
            err(f"{split} qa {qid}: {t} question lists {len(ids)} docs (want {'1' if want == 1 else '2+'})")
        if t in ("single", "multihop"):
            a0 = ans[0].lower()
            if not any(a0 in by_id[d]["text"].lower() for d in ids):
                err(f"{split} qa {qid}: first answer {ans[0]!r} not found in the text of {ids}")
        else:
            a0 = strip_the(ans[0])
            names = [strip_the(by_id[d]["title"]) for d in ids]
            if not any(a0 in n or n in a0 for n in names):
                err(f"{split} qa {qid}: comparison answer {ans[0]!r} names none of {names}")
            if not any(n in q["question"].lower() or n.split()[0] in q["question"].lower() for n in names):
                warn(f"{split} qa {qid}: question does not mention the compared entities")
        if t == "single":
            qw, dw = words(q["question"]), words(by_id[ids[0]]["text"])
            dgrams = {tuple(dw[j : j + NGRAM]) for j in range(len(dw) - NGRAM + 1)}
            for j in range(len(qw) - NGRAM + 1):
                if tuple(qw[j : j + NGRAM]) in dgrams:
                    warn(
                        f"{split} qa {qid}: question copies {NGRAM}+ words of its document: "
                        f"{' '.join(qw[j : j + NGRAM])!r}"
                    )
                    break
    if len(docs) < MIN_DOCS:
        err(f"{split}: only {len(docs)} documents (want >= {MIN_DOCS})")
    if len(qs) < MIN_QUESTIONS:
        err(f"{split}: only {len(qs)} questions (want >= {MIN_QUESTIONS})")
    used = {d for q in qs for d in q["docs"]}
    for d in by_id:
        if d not in used:
            warn(f"{split}: document {d} is not used by any question")
    return docs, qs, types


def proper_names(docs):
    """Capitalised words that are not at the start of a sentence."""
    out = set()
    for d in docs:
        for sent in re.split(r"(?<=[.!?])\s+", d["text"]):
            toks = re.findall(r"[A-Za-z][A-Za-z'-]*", sent)
            out.update(t for t in toks[1:] if t[0].isupper())
        out.update(w for w in re.findall(r"[A-Za-z][A-Za-z'-]*", d["title"]) if w[0].isupper())
    return out


def main():
    results = {s: check_split(s) for s in SPLITS}
    dev_docs, test_docs = results["dev"][0], results["test"][0]
    shared = {d["id"] for d in dev_docs} & {d["id"] for d in test_docs}
    if shared:
        err(f"dev and test share document ids: {sorted(shared)}")
    common_names = proper_names(dev_docs) & proper_names(test_docs)
    if common_names:
        warn(f"capitalised words in both dev and test: {sorted(common_names)}")
    if os.path.exists(DEMO):
        demo = [json.loads(line) for line in open(DEMO, encoding="utf-8") if line.strip()]
        demo_titles = {d["title"].lower() for d in demo}
        demo_ids = {d["id"] for d in demo}
        for s in SPLITS:
            for d in results[s][0]:
                if d["id"] in demo_ids or d["title"].lower() in demo_titles:
                    err(f"{s} corpus: {d['id']} reuses a demo entity")
                for t in demo_titles:
                    if t in d["text"].lower():
                        err(f"{s} corpus: {d['id']} mentions demo entity {t!r}")
        overlap = proper_names(demo) & (proper_names(dev_docs) | proper_names(test_docs))
        if overlap:
            warn(f"capitalised words shared with the demo corpus: {sorted(overlap)}")

    for s in SPLITS:
        docs, qs, types = results[s]
        n = max(len(qs), 1)
        mix = ", ".join(f"{t} {types[t]} ({100 * types[t] / n:.0f}%)" for t in TYPES)
        print(f"{s}: {len(docs)} documents, {len(qs)} questions: {mix}")
    for w in warnings:
        print("warning:", w)
    for e in errors:
        print("ERROR:", e)
    print("OK" if not errors else f"{len(errors)} error(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

"""The sweep of user mistakes: each scenario runs `prag ...` through cli.main in its own copy of a sandbox holding
a built work directory, a model folder, a corpus and a question file, and must end in one `prag ...: error` line
on stderr (no traceback) with exit status 2, changing no file of the sandbox (SQLite's -shm/-wal files aside)."""

import hashlib
import json
import os
import shutil

import pytest
from tiny import save_tiny_llama

from prag_core.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

DOCS = [
    {"id": "kite", "title": "Kite", "text": "Tom has a red kite. It flies over Leeds."},
    {"id": "bell", "text": "The bell rings at 9. Ana rings it."},
]
QA = [{"id": "q1", "question": "What color is Tom's kite?", "answers": ["red"]}]
FAST = ["--epochs", "1", "--augmenter", "fallback", "--warmup", "none", "--retriever", "bm25", "--device", "cpu"]


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    root = tmp_path_factory.mktemp("sandbox")
    write(root / "corpus.jsonl", "".join(json.dumps(d) + "\n" for d in DOCS))
    write(root / "qa.jsonl", "".join(json.dumps(q) + "\n" for q in QA))
    save_tiny_llama(root / "model")
    args = ["build", "--corpus", str(root / "corpus.jsonl"), "--workdir", str(root / "W"), "--model"]
    assert main([*args, str(root / "model"), *FAST]) == 0
    return root


def snapshot(root):
    """{path: sha256 of its bytes or link target} of everything under root."""
    files = {}
    for folder, dirs, names in os.walk(root):
        for name in names + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            path = os.path.join(folder, name)
            data = os.readlink(path).encode() if os.path.islink(path) else open(path, "rb").read()
            files[os.path.relpath(path, root)] = hashlib.sha256(data).hexdigest()
    return files


def _sqlite_own(path):
    """SQLite's shared-memory and write-ahead files, which any reader of a catalog in WAL mode may touch."""
    return path.endswith((".sqlite-shm", ".sqlite-wal"))


def scenarios(root):
    """(name, argv, expected fragment of the error line), each a mistake a user makes."""
    w, model, corpus, qa = (str(root / n) for n in ("W", "model", "corpus.jsonl", "qa.jsonl"))
    deep = write(root / "deep.jsonl", "[" * 100_000 + "]" * 100_000 + "\n")
    surrogate = write(root / "surrogate.jsonl", '{"id": "x", "text": "bad \\ud800 text"}\n')
    surrogate_qa = write(root / "surrogate_qa.jsonl", '{"id": "q", "question": "bad \\ud800?", "answers": ["x"]}\n')
    (root / "link.json").unlink(missing_ok=True)
    (root / "link.json").symlink_to(root / "qa.jsonl")
    damaged = root / "damaged"
    damaged.mkdir(exist_ok=True)
    write(damaged / "config.json", "[1, 2]")
    build = ["build", "--model", model, *FAST]
    ask = ["ask", "--workdir", w]
    evaluate = ["eval", "--workdir", w, "--questions", qa, "--modes", "prag"]
    return [
        ("the work directory's own corpus", [*build, "--corpus", f"{w}/corpus.jsonl", "--workdir", w], "corpus"),
        ("an empty --workdir", [*build, "--corpus", corpus, "--workdir", ""], "workdir"),
        ("a model folder as --workdir", [*build, "--corpus", corpus, "--workdir", model], model),
        ("a corpus nested 100,000 deep", [*build, "--corpus", str(deep), "--workdir", str(root / "W2")], "deep"),
        ("a lone surrogate in the corpus", [*build, "--corpus", str(surrogate), "--workdir", str(root / "W3")], ":1"),
        ("--out is the question file", [*evaluate, "--out", qa], "qa.jsonl"),
        ("--out inside the work directory", [*evaluate, "--out", f"{w}/config.json"], "config.json"),
        ("--out on a symlink", [*evaluate, "--out", str(root / "link.json")], "link.json"),
        (
            "a lone surrogate in a question file",
            [*evaluate[:4], str(surrogate_qa), "--out", str(root / "r.json")],
            ":1",
        ),
        ("a lone surrogate in a question", [*ask, "bad \ud800?"], "question"),
        ("no mode", [*evaluate[:4], qa, "--modes", ",", "--out", str(root / "r.json")], "modes"),
        ("--device meta", [*ask, "--device", "meta", "Who?"], "meta"),
        ("a damaged config.json", ["ask", "--workdir", str(damaged), "Who?"], "config.json"),
        ("--port out of range", ["serve", "--workdir", w, "--port", "99999"], "port"),
        ("a missing required flag", ["build", "--corpus", corpus], "--workdir"),
    ]


def test_every_mistake_is_one_line_and_changes_nothing(sandbox, capsys, tmp_path, monkeypatch):
    """Each scenario in its own copy of the sandbox, run from inside it (an empty path means that folder)."""
    failures = []
    for i, (name, _, _) in enumerate(scenarios(sandbox)):
        root = tmp_path / str(i)
        shutil.copytree(sandbox, root, symlinks=True)
        _, argv, fragment = scenarios(root)[i]
        monkeypatch.chdir(root)
        before = snapshot(root)
        capsys.readouterr()
        try:
            status = main(argv)
        except SystemExit as exit_:  # argparse
            status = exit_.code
        except Exception as err:  # a traceback the user would see
            status = f"{type(err).__name__} raised"
        err = capsys.readouterr().err.strip()
        after = snapshot(root)
        changed = sorted(
            k for k in before.keys() | after.keys() if before.get(k) != after.get(k) and not _sqlite_own(k)
        )
        lines = [line for line in err.splitlines() if line.startswith(("prag", "usage"))]  # not progress bars
        if status != 2 or len(lines) != 1 or "Traceback" in err or fragment not in lines[0] or changed:
            failures.append(f"{name}: status {status}, {len(lines)} line(s), changed {changed}: {err[-300:]!r}")
    assert not failures, "\n".join(failures)

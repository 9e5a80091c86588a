"""Input a user can get wrong, through `prag` itself: every JSON/JSONL file through one reader (a byte-order mark
read, a lone surrogate or a line nested 100,000 deep refused in one line naming file and line), a question that
is not text, a document of punctuation only, devices prag cannot run on, a damaged config.json or catalog, and
argparse's refusals in one line. Each ends in one `prag ...: error:` line and exit status 2, never a traceback."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest
from tiny import save_tiny_llama

from prag_core.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
BOM = "\ufeff"
DOCS = [
    {"id": "kite", "text": "Tom has a red kite. It flies over Leeds."},
    {"id": "bell", "text": "The bell rings at 9. Ana rings it."},
]
QA = [{"id": "q1", "question": "What color is Tom's kite?", "answers": ["red"]}]
SURROGATE = '"Tom \\ud800 kite"'  # valid JSON, but no character: a lone surrogate escape
DEEP = "[" * 100_000 + "]" * 100_000
FAST = ["--epochs", "1", "--augmenter", "fallback", "--warmup", "none", "--retriever", "bm25", "--device", "cpu"]


def jsonl(path, rows, bom=False):
    path.write_text((BOM if bom else "") + "".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows))
    return path


def one_line_error(capsys, code, *fragments):
    """stderr's error line (its last, after progress bars), after checking the exit status is 2, there is no
    traceback, one error line, and every fragment shows in it."""
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err and err.count("error") == 1, err
    assert last.startswith("prag: error: "), err
    for fragment in fragments:
        assert fragment in last, last
    return last


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """(root, work directory): root/model (a tiny model) and root/W built from DOCS."""
    root = tmp_path_factory.mktemp("input")
    save_tiny_llama(root / "model")
    corpus = jsonl(root / "corpus.jsonl", DOCS)
    assert (
        main(["build", "--corpus", str(corpus), "--workdir", str(root / "W"), "--model", str(root / "model"), *FAST])
        == 0
    )
    return root, root / "W"


@pytest.fixture
def damaged(work, tmp_path):
    """A private copy of the built work directory, free to damage."""
    return shutil.copytree(work[1], tmp_path / "W")


def test_bom_files_are_read_and_a_relative_model_folder_is_a_path(work, capsys, tmp_path, monkeypatch):
    """A corpus and a question file that start with a byte-order mark; `--model model` (no ./) run from the
    folder that holds it, offline (a hub id would fail at once): the folder, recorded by its absolute path."""
    monkeypatch.chdir(work[0])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    corpus = jsonl(tmp_path / "corpus.jsonl", DOCS, bom=True)
    code = main(["build", "--corpus", str(corpus), "--workdir", str(tmp_path / "W"), "--model", "model", *FAST])
    assert code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "W" / "config.json").read_text())["model"] == str((work[0] / "model").resolve())
    qa = jsonl(tmp_path / "qa.jsonl", QA, bom=True)
    argv = ["eval", "--workdir", str(tmp_path / "W"), "--questions", str(qa), "--modes", "vanilla", "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "r.json")]) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "r.json").read_text())["modes"]["vanilla"]["n"] == 1


@pytest.mark.parametrize(
    "line, fragment",
    [
        ('{"id": "x", "text": ' + SURROGATE + "}\n", "corpus.jsonl:2: field 'text' holds a lone surrogate"),
        ('{"id": ' + SURROGATE + ', "text": "Tom."}\n', "corpus.jsonl:2: field 'id' holds a lone surrogate"),
        ('{"id": "x", "text": "Tom.", "extra": {"a": [' + SURROGATE + "]}}\n", "field 'extra.a[0]' holds a lone"),
        pytest.param(DEEP + "\n", "corpus.jsonl:2: JSON nested too deeply", id="deep"),
    ],
)
def test_a_bad_corpus_line_is_one_line_before_the_model_loads(work, capsys, tmp_path, line, fragment):
    corpus = jsonl(tmp_path / "corpus.jsonl", [DOCS[0], line])
    code = main(["build", "--corpus", str(corpus), "--workdir", str(tmp_path / "W"), "--model", str(work[0] / "model")])
    one_line_error(capsys, code, fragment)
    assert not (tmp_path / "W").exists()


@pytest.mark.parametrize(
    "line, fragment",
    [
        ('{"id": "q", "question": ' + SURROGATE + ', "answers": ["red"]}\n', "qa.jsonl:2: field 'question' holds"),
        ('{"id": "q", "question": "Who?", "answers": [' + SURROGATE + "]}\n", "qa.jsonl:2: field 'answers[0]' holds"),
        pytest.param(DEEP + "\n", "qa.jsonl:2: JSON nested too deeply", id="deep"),
    ],
)
def test_a_bad_question_line_is_one_line(capsys, tmp_path, line, fragment):
    qa = jsonl(tmp_path / "qa.jsonl", [QA[0], line])
    code = main(["eval", "--workdir", str(tmp_path), "--questions", str(qa), "--out", str(tmp_path / "r.json")])
    one_line_error(capsys, code, fragment)


def test_a_document_of_punctuation_only_is_refused_before_anything_is_trained(work, capsys, tmp_path):
    corpus = jsonl(tmp_path / "corpus.jsonl", [DOCS[0], {"id": "dots", "text": "... !!! ??? ---"}, DOCS[1]])
    workdir = tmp_path / "W"
    code = main(["build", "--corpus", str(corpus), "--workdir", str(workdir), "--model", str(work[0] / "model"), *FAST])
    one_line_error(capsys, code, "corpus.jsonl:2: document 'dots' has no word", "remove it or give it text")
    assert not workdir.exists()  # refused before the model loads: nothing written


def test_a_question_that_is_not_text_is_one_line(work, capsys):
    code = main(["ask", "--workdir", str(work[1]), "--device", "cpu", "What color is Tom's \ud800 kite?"])
    one_line_error(capsys, code, "question: holds a lone surrogate", "\\ud800")
    # the same from a shell: a byte that is not UTF-8 in the argument (Python makes it a lone surrogate)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    argv = [sys.executable, "-m", "prag_core.cli", "ask", "--workdir", os.fsencode(work[1]), b"Tom's \xff kite?"]
    proc = subprocess.run(argv, env=env, capture_output=True, timeout=300)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2 and "Traceback" not in err, err
    assert err.strip().splitlines() == [err.strip()] and "question: holds a lone surrogate" in err, err


@pytest.mark.parametrize("device", ["meta", "mps"])
def test_a_device_prag_cannot_run_on_is_one_line(work, capsys, tmp_path, device):
    code = main(["ask", "--workdir", str(work[1]), "--device", device, "What color is Tom's kite?"])
    one_line_error(capsys, code, f"--device {device}: not a device prag can run on here; use cpu or cuda")
    corpus = jsonl(tmp_path / "corpus.jsonl", DOCS)
    argv = ["build", "--corpus", str(corpus), "--workdir", str(tmp_path / "W"), "--model", str(work[0] / "model")]
    code = main([*argv, *FAST[:-2], "--device", device])
    one_line_error(capsys, code, f"--device {device}: not a device prag can run on here")


REWRITE = "run `prag build` again to rewrite it"


@pytest.mark.parametrize(
    "config, fragments",
    [
        ("[1, 2]", ["config.json: expected a JSON object, got list", REWRITE]),
        ('{"model": 123}', ["config.json: field 'model' must be a str or null, got int 123", REWRITE]),
        ('{"training": "x"}', ["config.json: field 'training' must be a dict or null, got str", REWRITE]),
        ('{"model": "\\udc80"}', ["config.json: field 'model' holds a lone surrogate"]),
        ('{"model": ', ["config.json: malformed JSON (Expecting value, column 11)"]),
    ],
)
def test_a_damaged_config_json_names_the_file_and_field(damaged, capsys, config, fragments):
    (damaged / "config.json").write_text(config)
    code = main(["ask", "--workdir", str(damaged), "--device", "cpu", "What color is Tom's kite?"])
    one_line_error(capsys, code, *fragments)


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("dtype", "123", "meta dtype is 123"),
        ("shard_size", '"x"', 'meta shard_size is "x"'),
        ("next_shard", "-1", "meta next_shard is -1"),
        ("fingerprint", "[1]", "meta fingerprint is [1]"),
    ],
)
def test_a_damaged_catalog_meta_value_is_one_line(damaged, capsys, key, value, fragment):
    with sqlite3.connect(damaged / "store" / "catalog.sqlite") as db:
        db.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))
    db.close()
    code = main(["ask", "--workdir", str(damaged), "--device", "cpu", "What color is Tom's kite?"])
    one_line_error(capsys, code, "catalog.sqlite: unreadable catalog", fragment, "prag store verify --repair")


@pytest.mark.parametrize(
    "argv, first",
    [
        (["build"], "prag build: error: the following arguments are required: --corpus, --workdir"),
        (["ask", "--workdir", "W", "--bogus", "Who?"], "prag ask: error: unrecognized arguments: --bogus"),
        (["ask", "--workdir", "W", "--top-k", "0", "Who?"], "prag ask: error: argument --top-k: expected a positive"),
        (["serve", "--workdir", "W", "--port", "99999"], "prag serve: error: argument --port: expected a TCP port"),
        (["serve", "--workdir", "W", "--port", "0"], "prag serve: error: argument --port: expected a TCP port"),
        (["store"], "prag store: error: the following arguments are required: ACTION"),
        (["store", "verify", "--workdir", "W", "--nope"], "prag store verify: error: unrecognized arguments: --nope"),
        (["nothing"], "prag: error: argument COMMAND: invalid choice: 'nothing'"),
    ],
)
def test_argparse_refusals_are_one_line_and_a_hint(capsys, argv, first):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    prog = first.split(": error:")[0]
    assert exit_info.value.code == 2
    assert len(lines) == 2 and lines[0].startswith(first) and lines[1] == f"see `{prog} --help`", lines

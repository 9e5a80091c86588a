"""`prag ask` and `prag eval` through prag_core.cli.main: output, results.json, and one-line errors."""
import pytest

from prag_core.cli import main


def run_cli(capsys, *argv):
    """(exit status, stdout, stderr) of `prag argv...`."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code != 0
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("prag: error: "), err
    for fragment in fragments:
        assert fragment in last, last


def test_unknown_workdir(capsys, tmp_path):
    code, _, err = run_cli(capsys, "ask", "--workdir", str(tmp_path / "nowhere"), "Who built it?")
    assert_one_line_error(code, err, "nowhere", "no such work directory")
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "eval", "--workdir", str(tmp_path / "empty"), "--questions",
                           str(write(tmp_path / "qa.jsonl", '{"id": "1", "question": "Who?", "answers": ["x"]}\n')),
                           "--out", str(tmp_path / "r.json"))
    assert_one_line_error(code, err, "empty", "not a prag work directory")


def test_empty_question(capsys, tmp_path):
    code, _, err = run_cli(capsys, "ask", "--workdir", str(tmp_path), "   ")
    assert_one_line_error(code, err, "question: empty")


@pytest.mark.parametrize("line, fragment", [
    ('{"id": "1", "question": "Who?", "answers": ["x"]}\n{"id": "2", "question": "Who?"\n', "qa.jsonl:2: malformed JSON"),
    ('{"id": "1", "question": "", "answers": ["x"]}\n', "qa.jsonl:1: field 'question' is empty"),
    ('{"id": "1", "question": "Who?", "answers": []}\n', "qa.jsonl:1: field 'answers' is an empty list"),
])
def test_malformed_questions_file(capsys, tmp_path, line, fragment):
    code, _, err = run_cli(capsys, "eval", "--workdir", str(tmp_path), "--questions", str(write(tmp_path / "qa.jsonl", line)),
                           "--out", str(tmp_path / "r.json"))
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "r.json").exists()


def test_unknown_mode_and_update(capsys, tmp_path):
    qa = write(tmp_path / "qa.jsonl", '{"id": "1", "question": "Who?", "answers": ["x"]}\n')
    code, _, err = run_cli(capsys, "eval", "--workdir", str(tmp_path), "--questions", str(qa), "--modes", "rag,psychic",
                           "--out", str(tmp_path / "r.json"))
    assert_one_line_error(code, err, "mode: unknown 'psychic'")
    code, _, err = run_cli(capsys, "ask", "--workdir", str(tmp_path), "--update", "lazy", "Who?")
    assert_one_line_error(code, err, "update: unknown 'lazy'")


def write(path, text):
    path.write_text(text)
    return path

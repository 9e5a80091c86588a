"""Corpus and question files: what is read, and a one-line error naming file:line:field for each bad input."""

import hashlib
import json

import pytest

from prag_core.corpus import CorpusError, CorpusTexts, Document, Question, corpus_sha256, read_corpus, read_questions
from prag_core.files import write_bytes_atomic, write_jsonl_atomic, write_text_atomic


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_read_corpus(tmp_path):
    path = _write(
        tmp_path / "c.jsonl",
        [
            json.dumps({"id": "a", "text": "Alpha text.", "title": "Alpha", "extra": 1}),
            "",  # blank lines are skipped
            json.dumps({"id": "b", "text": "Bêta — ünïcode", "title": None}),
            json.dumps({"id": "c", "text": "Gamma."}),
        ],
    )
    docs = read_corpus(path)
    assert [d.id for d in docs] == ["a", "b", "c"]
    assert docs[0] == Document("a", "Alpha text.", "Alpha", hashlib.sha256(b"Alpha text.").hexdigest())
    assert docs[1].title is None and docs[2].title is None
    assert docs[1].sha256 == hashlib.sha256("Bêta — ünïcode".encode()).hexdigest()


def test_read_questions(tmp_path):
    path = _write(
        tmp_path / "q.jsonl",
        [
            json.dumps({"id": "q1", "question": "Who?", "answers": ["Ann", "Ann Lee"], "doc_id": "x"}),
            json.dumps({"id": "q2", "question": "When?", "answers": ["1900"]}),
        ],
    )
    assert read_questions(path) == [Question("q1", "Who?", ["Ann", "Ann Lee"]), Question("q2", "When?", ["1900"])]


GOOD_DOC = json.dumps({"id": "ok", "text": "fine"})
GOOD_Q = json.dumps({"id": "ok", "question": "fine?", "answers": ["yes"]})


@pytest.mark.parametrize(
    "bad, expected",
    [
        ('{"id": "x", "text": ', r":2: malformed JSON"),
        ('["x", "text"]', r":2: expected a JSON object, got list"),
        ('{"text": "no id"}', r":2: missing field 'id'"),
        ('{"id": 7, "text": "numeric id"}', r":2: field 'id' must be a string, got int"),
        ('{"id": "  ", "text": "blank id"}', r":2: field 'id' is empty"),
        ('{"id": "x"}', r":2: missing field 'text'"),
        ('{"id": "x", "text": ""}', r":2: field 'text' is empty"),
        ('{"id": "x", "text": " \\n "}', r":2: field 'text' is empty"),
        ('{"id": "x", "text": null}', r":2: field 'text' must be a string, got NoneType"),
        ('{"id": "x", "text": ["a"]}', r":2: field 'text' must be a string, got list"),
        ('{"id": "x", "text": "t", "title": 3}', r":2: field 'title' must be a string, got int"),
        ('{"id": "x", "text": "t", "title": ""}', r":2: field 'title' is empty"),
        ('{"id": "ok", "text": "again"}', r":2: duplicate id 'ok' \(first on line 1\)"),
    ],
)
def test_corpus_errors(tmp_path, bad, expected):
    path = _write(tmp_path / "c.jsonl", [GOOD_DOC, bad])
    with pytest.raises(CorpusError, match=str(path).replace(".", r"\.") + expected) as err:
        read_corpus(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "bad, expected",
    [
        ('{"id": "x", "answers": ["a"]}', r":2: missing field 'question'"),
        ('{"id": "x", "question": "", "answers": ["a"]}', r":2: field 'question' is empty"),
        ('{"id": "x", "question": "q?"}', r":2: field 'answers' missing"),
        ('{"id": "x", "question": "q?", "answers": "a"}', r":2: field 'answers' must be a list, got str"),
        ('{"id": "x", "question": "q?", "answers": []}', r":2: field 'answers' is an empty list"),
        ('{"id": "x", "question": "q?", "answers": ["a", 5]}', r":2: field 'answers\[1\]' must be a non-empty string"),
        ('{"id": "x", "question": "q?", "answers": ["a", " "]}', r":2: field 'answers\[1\]' must be a non-empty"),
        ('{"id": "ok", "question": "q?", "answers": ["a"]}', r":2: duplicate id 'ok' \(first on line 1\)"),
        ('"just a string"', r":2: expected a JSON object, got str"),
    ],
)
def test_question_errors(tmp_path, bad, expected):
    path = _write(tmp_path / "q.jsonl", [GOOD_Q, bad])
    with pytest.raises(CorpusError, match=str(path).replace(".", r"\.") + expected):
        read_questions(path)


def test_duplicate_id_after_blank_lines_names_both_lines(tmp_path):
    path = _write(tmp_path / "c.jsonl", [GOOD_DOC, "", "  ", GOOD_DOC])
    with pytest.raises(CorpusError, match=r"c\.jsonl:4: duplicate id 'ok' \(first on line 1\)"):
        read_corpus(path)


def test_file_level_errors(tmp_path):
    with pytest.raises(CorpusError, match=r"missing\.jsonl: no such file"):
        read_corpus(tmp_path / "missing.jsonl")
    with pytest.raises(CorpusError, match="a directory, not a .jsonl file"):
        read_questions(tmp_path)
    with pytest.raises(CorpusError, match=r"empty\.jsonl: no records"):
        read_corpus(_write(tmp_path / "empty.jsonl", ["", "   "]))
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(GOOD_DOC.encode() + b'\n{"id": "x", "text": "caf\xe9"}\n')
    with pytest.raises(CorpusError, match=r"latin1\.jsonl:2: not valid UTF-8"):
        read_corpus(latin1)


def test_write_jsonl_atomic_round_trip(tmp_path):
    path = tmp_path / "sub" / "rows.jsonl"
    rows = [{"id": "a", "text": "ünïcode"}, {"id": "b", "text": "two"}]
    write_jsonl_atomic(path, rows)
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == rows
    assert [d.id for d in read_corpus(path)] == ["a", "b"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["rows.jsonl"]  # no temporary file left


def test_failed_atomic_write_keeps_old_file(tmp_path):
    path = tmp_path / "f.txt"
    write_text_atomic(path, "old")
    with pytest.raises(TypeError):
        write_jsonl_atomic(path, [{"ok": 1}, {"bad": object()}])  # fails while serialising
    with pytest.raises(TypeError):
        write_bytes_atomic(path, "text is not bytes")  # fails while writing the temporary file
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_demo_dev_set_is_well_formed():
    """The shipped fictional dev set: ≥ 12 documents of 60–120 words, 3 questions each, answers in the text."""
    from prag_core.corpus import DEMO_CORPUS, DEMO_QUESTIONS
    from prag_core.metrics import acc

    docs = {d.id: d for d in read_corpus(DEMO_CORPUS)}
    questions = read_questions(DEMO_QUESTIONS)
    doc_of = {
        json.loads(line)["id"]: json.loads(line)["doc_id"]
        for line in DEMO_QUESTIONS.read_text(encoding="utf-8").splitlines()
    }
    assert len(docs) >= 12 and len(questions) >= 36
    assert all(60 <= len(d.text.split()) <= 120 and d.title for d in docs.values())
    assert sorted(doc_of.values()) == sorted(3 * list(docs))  # 3 questions per document, no unknown doc_id
    for q in questions:
        assert 1 <= len(q.answers[0].split()) <= 3, q.id
        assert acc(docs[doc_of[q.id]].text, q.answers[:1]) == 1.0, q.id  # the main answer is stated in the text
    for doc_id in docs:  # 3 distinct facts per document
        firsts = [q.answers[0].lower() for q in questions if doc_of[q.id] == doc_id]
        assert len(set(firsts)) == 3, doc_id


def test_corpus_texts_read_each_passage_from_the_file_when_asked(tmp_path):
    lines = [
        json.dumps({"id": "a", "text": "Alpha text.", "title": "Alpha"}),
        "   ",  # blank lines are skipped
        json.dumps({"id": "é", "text": "Ωμέγα café 東京 — \u2028 line separator"}, ensure_ascii=False),
        json.dumps({"id": "c", "text": "Gamma\nwith a newline escaped"}),
    ]
    path = tmp_path / "c.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(line + "\n" for line in lines).encode("utf-8"))  # a BOM first
    texts = CorpusTexts(path)
    docs = read_corpus(path)
    assert dict(texts) == {d.id: d.text for d in docs} and list(texts) == ["a", "é", "c"]
    assert texts.corpus_sha256 == corpus_sha256(docs) and "b" not in texts and texts.get("b") is None
    write_jsonl_atomic(path, [{"id": "a", "text": "Rewritten, longer than before."}])  # prag build rewrites it
    assert texts["a"] == "Alpha text." and texts["c"] == "Gamma\nwith a newline escaped"  # still the file it read
    with pytest.raises(CorpusError, match=r"c\.jsonl:2: duplicate id 'a'"):
        CorpusTexts(_write(tmp_path / "c.jsonl", [json.dumps({"id": "a", "text": "x"})] * 2))

"""Reading a corpus and a question set (JSONL; docs/design.md, Corpus and questions); the readers and atomic writes
they use are files.py's.

corpus.jsonl:  {"id": str, "text": str, "title"?: str}            other keys ignored
qa.jsonl:      {"id": str, "question": str, "answers": [str, ...], "docs"?: [str, ...], "type"?: str}
               other keys ignored (docs: the ids of the documents that support the answer, for retrieval
               recall; type: single, multihop, comparison or another label, for F1 per type)

Every problem is reported as one `CorpusError` line that names the file, the
line and the field, so the CLI can print it without a traceback. Blank lines
are skipped.
"""

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from prag_core.errors import PragError
from prag_core.files import read_jsonl

# The shipped fictional dev set (used by `prag demo` and the parametrization sweep).
DATA = Path(__file__).parent / "data"  # the shipped demo corpus, warm-up corpus and warm-up pair
DEMO_CORPUS = DATA / "demo_corpus.jsonl"
DEMO_QUESTIONS = DATA / "demo_qa.jsonl"


class CorpusError(PragError):
    """Bad corpus or question file; the message names file:line and field."""


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    title: str | None
    sha256: str  # of `text`, so a changed text is re-encoded
    line: int | None = dataclasses.field(default=None, compare=False)  # its line in the file read, for messages


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answers: list[str]
    docs: tuple = ()  # supporting document ids, when the file lists them
    type: str | None = None  # e.g. single, multihop, comparison: eval reports F1 per type


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _records(path, spans=None):
    """Yield (where, line number, JSON object) for every non-blank line, then check ids are unique."""
    path, first_line = Path(path), {}
    for lineno, obj in read_jsonl(path, CorpusError, spans):
        where = f"{path}:{lineno}"
        if not isinstance(obj, dict):
            raise CorpusError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        doc_id = _string(obj, "id", where)
        if doc_id in first_line:
            raise CorpusError(f"{where}: duplicate id {doc_id!r} (first on line {first_line[doc_id]})")
        first_line[doc_id] = lineno
        yield where, lineno, obj
    if not first_line:
        raise CorpusError(f"{path}: no records (the file is empty)")


def _string(obj, field, where, required=True):
    """The non-blank string obj[field]; None if optional and absent or null."""
    value = obj.get(field)
    if value is None and not required:
        return None
    if field not in obj:
        raise CorpusError(f"{where}: missing field {field!r}")
    if not isinstance(value, str):
        raise CorpusError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise CorpusError(f"{where}: field {field!r} is empty")
    return value


def iter_corpus(path, spans=None):
    """Yield the documents of a corpus.jsonl file, in file order, one at a time (`spans`: see read_jsonl)."""
    for where, lineno, obj in _records(path, spans):
        text = _string(obj, "text", where)
        title = _string(obj, "title", where, required=False)
        yield Document(id=obj["id"], text=text, title=title, sha256=text_sha256(text), line=lineno)


def read_corpus(path) -> list[Document]:
    """The documents of a corpus.jsonl file, in file order."""
    return list(iter_corpus(path))


def corpus_sha256(docs) -> str:
    """One hash of the ids, titles and texts, in order, to tell whether an index matches a corpus."""
    h = hashlib.sha256()
    for doc in docs:
        h.update(json.dumps([doc.id, doc.title, doc.sha256]).encode("utf-8") + b"\n")
    return h.hexdigest()


class CorpusTexts(Mapping):
    """Document id -> text of a corpus.jsonl file, read from the file when asked: a server holds a corpus's ids
    and line offsets, not its text (a million passages are ~0.7 GB of text). Opening reads the file once, line
    by line, checking it as read_corpus does and computing its corpus_sha256. The file stays open, so a later
    atomic rewrite of it (prag build) does not change what this reads."""

    def __init__(self, path):
        self.path, spans, ids = Path(path), [], []

        def scanned():
            for doc in iter_corpus(self.path, spans):
                ids.append(doc.id)
                yield doc

        self.corpus_sha256 = corpus_sha256(scanned())
        self._span = dict(zip(ids, spans))
        self._fd = os.open(self.path, os.O_RDONLY)

    def __getitem__(self, doc_id):
        offset, length = self._span[doc_id]
        return json.loads(os.pread(self._fd, length, offset).decode("utf-8").removeprefix("\ufeff"))["text"]

    def __iter__(self):
        return iter(self._span)

    def __len__(self):
        return len(self._span)

    def __del__(self):
        if hasattr(self, "_fd"):
            os.close(self._fd)


def read_questions(path) -> list[Question]:
    """The questions of a qa.jsonl file, in file order."""
    questions = []
    for where, _, obj in _records(path):
        question = _string(obj, "question", where)
        answers = obj.get("answers")
        if not isinstance(answers, list):
            problem = "missing" if "answers" not in obj else f"must be a list, got {type(answers).__name__}"
            raise CorpusError(f"{where}: field 'answers' {problem}")
        if not answers:
            raise CorpusError(f"{where}: field 'answers' is an empty list")
        for i, alias in enumerate(answers):
            if not isinstance(alias, str) or not alias.strip():
                raise CorpusError(f"{where}: field 'answers[{i}]' must be a non-empty string, got {alias!r}")
        docs = obj.get("docs", [])
        if not isinstance(docs, list) or not all(isinstance(d, str) and d.strip() for d in docs):
            raise CorpusError(f"{where}: field 'docs' must be a list of document ids, got {docs!r}")
        kind = obj.get("type")
        if kind is not None and not (isinstance(kind, str) and kind.strip()):
            raise CorpusError(f"{where}: field 'type' must be a non-empty string, got {kind!r}")
        questions.append(Question(obj["id"], question, list(answers), tuple(docs), kind))
    return questions


def source_of(passage_id, doc_id):
    """Whether `passage_id` is document `doc_id` or one of its passages (for recall against documents)."""
    return passage_id == doc_id or passage_id.startswith(doc_id + "#")

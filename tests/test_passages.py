"""`prag build --passage-words N`: documents split on sentence boundaries into passages doc#1, doc#2, ...,
each retrieved and trained on its own; a re-run re-encodes nothing; recall counts passages for documents."""

import json

import pytest
from tiny import save_tiny_llama

from prag_core.answer.evaluate import retrieval_recall
from prag_core.cli import main
from prag_core.corpus import Document, Question, read_corpus, source_of, text_sha256
from prag_core.offline.passages import split_passages
from prag_core.retrieval.bm25 import BM25Index
from prag_core.storage.store import Store

pytestmark = pytest.mark.usefixtures("one_thread")
LONG = (
    "Tom has a red kite. It flies over Leeds on windy days! Does it ever land? Only in May. "
    "The string is blue and very long."
)


def _doc(doc_id, text, title=None):
    return Document(doc_id, text, title, text_sha256(text))


def test_split_on_sentence_boundaries_within_the_word_budget():
    passages = split_passages([_doc("kite", LONG, "Kite"), _doc("bell", "The bell rings at 9.")], words=10)
    assert [(p.id, p.text) for p in passages] == [
        ("kite#1", "Tom has a red kite."),  # 5 words; the next sentence's 7 would make 12
        ("kite#2", "It flies over Leeds on windy days!"),
        ("kite#3", "Does it ever land? Only in May."),  # 4 + 3 words
        ("kite#4", "The string is blue and very long."),
        ("bell", "The bell rings at 9."),
    ]  # short enough: whole, its id kept
    assert all(p.title == "Kite" and p.sha256 == text_sha256(p.text) for p in passages[:4])
    assert split_passages([_doc("kite", LONG)], words=3)[0].text == "Tom has a red kite."  # a long sentence alone
    assert split_passages([_doc("kite", LONG)], words=100)[0].id == "kite"
    assert split_passages([_doc("kite", LONG)], words=10) == split_passages([_doc("kite", LONG)], words=10)
    with pytest.raises(ValueError, match="passage id 'kite#1' is also the id of another document"):
        split_passages([_doc("kite", LONG), _doc("kite#1", "taken")], words=10)


def test_recall_counts_a_passage_for_its_document():
    assert source_of("kite#2", "kite") and source_of("kite", "kite") and not source_of("kites", "kite")
    index = BM25Index.build(
        split_passages(
            [_doc("kite", LONG), _doc("bell", "The bell rings at 9."), _doc("figs", "Bo eats figs.")], words=10
        )
    )
    questions = [
        Question("q", "What colour is the string?", ["blue"], ("kite",)),
        Question("r", "When does the bell ring?", ["9"], ("bell",)),
    ]
    assert retrieval_recall(index, questions, depths=(1,)) == {"recall@1": 1.0}


def test_build_with_passages_trains_each_and_resumes(tmp_path, capsys):
    model = save_tiny_llama(tmp_path / "model")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        json.dumps({"id": "kite", "title": "Kite", "text": LONG})
        + "\n"
        + json.dumps({"id": "bell", "text": "The bell rings at 9. Ana rings it."})
        + "\n"
    )
    work = tmp_path / "W"
    argv = [
        "build",
        "--corpus",
        str(corpus),
        "--workdir",
        str(work),
        "--model",
        str(model),
        "--epochs",
        "1",
        "--augmenter",
        "fallback",
        "--warmup",
        "none",
        "--passage-words",
        "10",
    ]
    assert main(argv) == 0
    assert "built 5 documents (5 encoded now" in capsys.readouterr().out
    assert [d.id for d in read_corpus(work / "corpus.jsonl")] == ["kite#1", "kite#2", "kite#3", "kite#4", "bell"]
    assert sorted(Store(work / "store")) == ["bell", "kite#1", "kite#2", "kite#3", "kite#4"]
    assert json.loads((work / "config.json").read_text())["passage_words"] == 10
    assert main(argv) == 0
    assert "built 5 documents (0 encoded now, 5 already in the store" in capsys.readouterr().out
    assert main(["ask", "--workdir", str(work), "--top-k", "1", "What colour is the string?"]) == 0
    assert capsys.readouterr().out.splitlines()[-2] == "documents: kite#4"

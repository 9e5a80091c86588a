"""Augmentation: parsing of model output, retries, the deterministic fallback, the JSONL cache."""

import json

import pytest
from tiny import tiny_llama, tiny_tokenizer

from prag_core.corpus import Document, text_sha256
from prag_core.offline.augment import (
    Augmentation,
    LMGenerator,
    augment,
    augment_documents,
    fallback_qa,
    fallback_rewrites,
    parse_qa,
    repeats,
    sentences,
)

pytestmark = pytest.mark.usefixtures("one_thread")
TEXT = (
    "The Orrin Mill stands on the river Pell. It was built in 1788 by Hanna Voss. "
    "The mill grinds barley for the village of Tamsk."
)
GOOD_QA = (
    "Q: Who built the Orrin Mill?\nA: Hanna Voss\nQ: When was the mill built?\nA: 1788\n"
    "Q: Which river does the mill stand on?\nA: the river Pell"
)
GOOD_REWRITE = "Hanna Voss built the Orrin Mill on the river Pell in 1788; it grinds barley for Tamsk."


class FakeGenerator:
    """Replies by round: replies[seed] (seed None = round 0) for QA chats and rewrite chats. Asked a question
    with the passage (the round-trip check, recorded in `checks`), it answers with the answer its own QA
    replies gave, or with `wrong[question]`."""

    name = "fake"

    def __init__(self, qa, rewrite, wrong=None):
        self.qa, self.rewrite, self.wrong, self.calls, self.checks = qa, rewrite, wrong or {}, [], []

    def __call__(self, chats, max_new_tokens, seed=None):
        asked = [c[-1]["content"] for c in chats]
        if all("using the passages below" in a for a in asked):
            self.checks.append(len(chats))
            known = {q: a for reply in self.qa.values() for q, a in parse_qa(reply, TEXT)}
            questions = [a.rsplit("Question: ", 1)[1] for a in asked]
            return [f"The answer is {self.wrong.get(q, known.get(q, 'unknown'))}." for q in questions]
        self.calls.append((len(chats), seed))
        is_qa = ["Q: <question>?" in a for a in asked]
        return [(self.qa if q else self.rewrite).get(seed, "") for q in is_qa]

    def count_tokens(self, text):
        return len(text.split())


def test_parse_qa_formats():
    reply = (
        "1. Q: Who built the Orrin Mill?\nA: Hanna Voss.\n"
        "Q2: When was it built? A2: 1788\n"
        "Question: Which village gets the barley?\nAnswer: Tamsk"
    )
    assert parse_qa(reply, TEXT) == [
        ("Who built the Orrin Mill?", "Hanna Voss"),
        ("When was it built?", "1788"),
        ("Which village gets the barley?", "Tamsk"),
    ]


def test_parse_qa_rejects_invalid_pairs():
    reply = (
        "Q: Who built the Orrin Mill\nA: Hanna Voss\n"  # no question mark
        "Q: What does the mill grind?\nA: barley for the village of Tamsk on the river Pell\n"  # too long
        "Q: Who owns the mill?\nA: Corin Vale\n"  # not in the document
        "Q: Where is the mill?\n"  # no answer line
        "Some chatter.\nA: Tamsk\n"  # answer without question
        "Q: Who built the Orrin Mill?\nA: Hanna Voss\n"  # valid
        "Q: who built the orrin mill?\nA: 1788\n"  # duplicate question (normalised)
        "Q: Who designed the Orrin Mill?\nA: hanna voss\n"  # duplicate answer
        "Q: What is the Orrin Mill?\nA: The Orrin Mill\n"  # answer inside the question
        "Q: ?\nA: Tamsk"
    )  # empty question
    assert parse_qa(reply, TEXT) == [("Who built the Orrin Mill?", "Hanna Voss")]
    earlier = [("Who built the Orrin Mill?", "1788")]
    assert parse_qa("Q: Who built the Orrin Mill?\nA: Hanna Voss\nQ: When?\nA: 1788", TEXT, seen=earlier) == []


def test_model_output_used_when_valid_greedy_first():
    gen = FakeGenerator(qa={None: GOOD_QA}, rewrite={None: GOOD_REWRITE})
    aug = augment(TEXT, gen, n_rewrites=1, n_qa=3, retries=2)
    assert aug.source == "model" and aug.attempts == 1
    assert aug.rewrites == [GOOD_REWRITE]
    assert [a for _, a in aug.qa] == ["Hanna Voss", "1788", "the river Pell"]
    assert all(seed is None for _, seed in gen.calls)  # greedy only


def test_round_trip_drops_a_false_pair_and_repeating_rewrites_are_rejected():
    """A pair whose question the model, given the passage, answers otherwise is dropped (counted); so is a
    rewrite that pastes the passage twice or repeats a sentence; the next round (or the fallback) fills in."""
    false_pair = "Q: Who built the Orrin Mill?\nA: Tamsk\nQ: When was the mill built?\nA: 1788"
    gen = FakeGenerator(
        qa={None: false_pair, 1: GOOD_QA},
        wrong={"Who built the Orrin Mill?": "Hanna Voss"},
        rewrite={None: TEXT + " " + TEXT, 1: "It grinds barley. It grinds barley. Voss built it in 1788."},
    )
    aug = augment(TEXT, gen, n_rewrites=1, n_qa=2, retries=1)
    # round 0: "Tamsk" is dropped (the model, given the passage, says Hanna Voss); round 1 brings the true pair
    assert aug.qa == [("When was the mill built?", "1788"), ("Who built the Orrin Mill?", "Hanna Voss")]
    assert aug.dropped == {"qa_round_trip": 1, "rewrite_repeat": 2}
    assert aug.rewrites == fallback_rewrites(TEXT, 1) and aug.source == "fallback"
    assert gen.checks == [2, 2]  # every parsed pair is checked (1788 is not parsed again), one call per round
    assert repeats(TEXT + " " + TEXT, TEXT) and not repeats(GOOD_REWRITE, TEXT)


def test_retry_with_new_seed_after_malformed_output():
    gen = FakeGenerator(
        qa={None: "I cannot do that.", 1: "garbage", 2: GOOD_QA}, rewrite={None: TEXT, 1: GOOD_REWRITE}
    )  # a verbatim copy is not a rewrite
    aug = augment(TEXT, gen, retries=2)
    assert aug.source == "model" and aug.attempts == 3
    assert aug.rewrites == [GOOD_REWRITE] and len(aug.qa) == 3
    assert [seed for _, seed in gen.calls] == [None, None, 1, 1, 2]  # rewrite done after round 1


def test_fallback_after_retries_is_recorded():
    gen = FakeGenerator(qa={None: "Q: Who built the Orrin Mill?\nA: Hanna Voss"}, rewrite={None: "ok"})
    aug = augment(TEXT, gen, n_rewrites=1, n_qa=3, retries=1)
    assert aug.source == "fallback" and aug.attempts == 2
    assert aug.qa[0] == ("Who built the Orrin Mill?", "Hanna Voss")  # the model's valid pair is kept
    assert aug.qa[1:] == fallback_qa(TEXT, 2, seen=aug.qa[:1])
    assert "Hanna Voss" not in [a for _, a in aug.qa[1:]]  # a fact already asked is not asked again
    assert aug.rewrites == fallback_rewrites(TEXT, 1)
    no_model = augment(TEXT, None)
    assert no_model.source == "fallback" and no_model.attempts == 0 and len(no_model.qa) == 3


def test_fallback_rewrite_rotates_sentences():
    parts = sentences(TEXT)
    assert len(parts) == 3
    first, second = fallback_rewrites(TEXT, 2)
    assert first == " ".join(parts[1:] + parts[:1]) and second == " ".join(parts[2:] + parts[:2])


def test_fallback_cloze_questions():
    pairs = fallback_qa(TEXT, 5)
    assert len(pairs) == 5 and len({q for q, _ in pairs}) == 5
    # the first span of every sentence, in order: a name, then the number before the name, then a name
    assert [a for _, a in pairs[:3]] == ["Orrin Mill", "1788", "Tamsk"]
    for question, answer in pairs:
        assert question.endswith("?") and "___" in question and answer not in question.split('"')[1]
        assert question.split('"')[1].replace("___", answer) in TEXT
    assert len({a.lower() for _, a in pairs}) == 5
    assert fallback_qa(TEXT, 5) == pairs  # deterministic
    assert len(fallback_qa("Rain.", 3)) == 1  # a one-word document gives what it can
    assert [a for _, a in fallback_qa("Ada met Bo. Bo met Cy.", 9)].count("Bo") == 1  # each span once


def test_lm_generator_on_tiny_model_falls_back():
    """The real generation path (chat template, left-padded batch, sampling retries) on a random model,
    whose output never parses."""
    tok = tiny_tokenizer()
    gen = LMGenerator(tiny_llama(), tok, batch_size=2)
    replies = gen([[{"role": "user", "content": "Hi?"}]] * 3, max_new_tokens=4)
    assert len(replies) == 3 and replies[0] == replies[2]  # greedy: identical chats, identical replies
    aug = augment("Ada won 3 cups.", gen, n_qa=2, retries=1)
    assert aug.source == "fallback" and aug.attempts == 2 and len(aug.qa) == 2


def _docs(*texts):
    return [Document(id=f"d{i}", text=t, title=None, sha256=text_sha256(t)) for i, t in enumerate(texts)]


def test_cache_reuses_and_redoes_changed_documents(tmp_path):
    cache = tmp_path / "augment.jsonl"
    gen = FakeGenerator(qa={None: GOOD_QA}, rewrite={None: GOOD_REWRITE})
    docs = _docs(TEXT, TEXT + " It has a red door.")
    first = augment_documents(docs, gen, cache, batch_size=1)
    assert [n for n, _ in gen.calls] == [1, 1, 1, 1]  # two batches of one, rewrite + QA each
    gen.calls.clear()
    assert augment_documents(docs, gen, cache) == first and gen.calls == []  # re-run costs nothing
    changed = _docs(TEXT, TEXT + " It has a blue door.")
    again = augment_documents(changed, gen, cache)
    assert again[0] == first[0] and [n for n, _ in gen.calls] == [1, 1]  # only the changed text
    gen.calls.clear()
    augment_documents(docs, gen, cache, n_qa=2)  # other settings: a different key
    assert len(gen.calls) == 2


def test_cache_survives_a_torn_last_line(tmp_path):
    cache = tmp_path / "augment.jsonl"
    gen = FakeGenerator(qa={None: GOOD_QA}, rewrite={None: GOOD_REWRITE})
    docs = _docs(TEXT, "Bo has 2 cats. They are grey.")
    augment_documents(docs, gen, cache)
    lines = cache.read_text().splitlines(keepends=True)
    cache.write_text(lines[0] + lines[1][:25])  # a crash in the middle of the second append
    gen.calls.clear()
    result = augment_documents(docs, gen, cache)
    assert gen.calls and all(n == 1 for n, _ in gen.calls)  # only the torn document is redone
    rows = [json.loads(line) for line in cache.read_text().splitlines()]
    assert [r["sha256"] for r in rows] == [d.sha256 for d in docs]
    assert isinstance(result[1], Augmentation) and result[1].source == "fallback"

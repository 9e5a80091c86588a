"""Training sequences: the PRAG and cross constructions, chat template, serving-prompt prefix."""

import pytest
from tiny import tiny_tokenizer

from prag_core.offline.augment import Augmentation
from prag_core.offline.samples import build_samples
from prag_core.prompts import ANSWER_PREFIX, qa_messages, render

TEXT = "Mira keeps 7 owls."
AUG = Augmentation(
    rewrites=["Seven owls live with Mira."],
    qa=[("Who keeps owls?", "Mira"), ("How many owls?", "7"), ("What does Mira keep?", "owls")],
    source="model",
    attempts=1,
)


def _decode(tok, ids):
    return tok.decode(ids, skip_special_tokens=False)


def test_prag_construction():
    tok = tiny_tokenizer()
    seqs = [_decode(tok, s) for s in build_samples(TEXT, AUG, tok, "prag")]
    assert len(seqs) == 5
    expected = [
        ("Who keeps owls?", TEXT),
        ("Who keeps owls?", AUG.rewrites[0]),
        ("How many owls?", TEXT),
        ("How many owls?", AUG.rewrites[0]),
        ("What does Mira keep?", None),
    ]
    answers = ["Mira", "Mira", "7", "7", "owls"]
    for seq, (question, passage), answer in zip(seqs, expected, answers):
        user = qa_messages(question, [passage] if passage else None)[0]["content"]
        assert seq == f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\nThe answer is {answer}.<|im_end|>"
    assert "Passage" not in seqs[4] and TEXT not in seqs[4]


def test_cross_construction():
    tok = tiny_tokenizer()
    seqs = [_decode(tok, s) for s in build_samples(TEXT, AUG, tok, "cross")]
    assert len(seqs) == 6  # 2 versions x 3 pairs
    for i, (question, answer) in enumerate(AUG.qa):
        assert TEXT in seqs[2 * i] and AUG.rewrites[0] in seqs[2 * i + 1]
        assert question in seqs[2 * i] and seqs[2 * i].endswith(f"The answer is {answer}.<|im_end|>")


def test_sequence_starts_with_the_serving_prompt():
    """A sample is the serving prompt (render + answer prefix) continued by the answer: same tokens."""
    tok = tiny_tokenizer()
    for template in (tok.chat_template, None):
        tok.chat_template = template
        sample = build_samples(TEXT, AUG, tok)[0]
        prompt = tok(render(tok, qa_messages("Who keeps owls?", [TEXT])) + ANSWER_PREFIX, add_special_tokens=False)[
            "input_ids"
        ]
        assert sample[: len(prompt)] == prompt and sample[-1] == tok.eos_token_id
        assert _decode(tok, sample[len(prompt) :]) == " Mira.<|im_end|>"
    assert "<|im_start|>" not in _decode(tok, sample)  # no template: plain text


def test_unpadded_and_unknown_construction():
    tok = tiny_tokenizer()
    lengths = {len(s) for s in build_samples(TEXT, AUG, tok)}
    assert len(lengths) > 1 and tok.pad_token_id not in {t for s in build_samples(TEXT, AUG, tok) for t in s}
    with pytest.raises(ValueError, match="construction"):
        build_samples(TEXT, AUG, tok, "mixed")

"""Training sequences for one document, from its augmentation (docs/design.md, Training).

Every sequence is one chat exchange: the user turn `prompts.qa_messages(question,
[passage])` (or no passage), the assistant turn "The answer is {answer}.", then the
end-of-sequence token. It is tokenized exactly as serving tokenizes its prompt
(`prompts.render` + the answer prefix), so training and serving see the same tokens.
Loss is taken on every token, so sequences are plain token id lists, unpadded.

Constructions, for versions V = [original] + rewrites and QA pairs Q = q_1..q_m:
  prag   (the PRAG reference code) the first ⌈m/2⌉ pairs with every version in the prompt,
         the other pairs with no passage: 2·2 + 1 = 5 sequences for one rewrite and m = 3.
  cross  (the seed's D_i) every version with every pair: |V|·m sequences.

Distillation (train.py, objective distill/both) uses one item per QA pair instead:
the student sequence asks the question alone, the teacher sequence asks it with the
original passage in the prompt, and both end in the same answer tokens.
"""

from dataclasses import dataclass

from prag_core.prompts import answer_target, qa_messages, render

CONSTRUCTIONS = ("prag", "cross")


def sequence_ids(tokenizer, question, answer, passage=None):
    """Token ids of one training sequence (prompt, target answer, end of sequence)."""
    prompt = render(tokenizer, qa_messages(question, [passage] if passage is not None else None))
    ids = tokenizer(prompt + answer_target(answer), add_special_tokens=False)["input_ids"]
    return ids + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])


def build_samples(text, aug, tokenizer, construction="prag"):
    """The training sequences (token id lists) of a document `text` with its Augmentation `aug`."""
    if construction not in CONSTRUCTIONS:
        raise ValueError(f"construction: unknown {construction!r}; choose from {', '.join(CONSTRUCTIONS)}")
    versions = [text] + list(aug.rewrites)
    with_passage = len(aug.qa) if construction == "cross" else (len(aug.qa) + 1) // 2
    samples = [sequence_ids(tokenizer, q, a, v) for q, a in aug.qa[:with_passage] for v in versions]
    return samples + [sequence_ids(tokenizer, q, a) for q, a in aug.qa[with_passage:]]


@dataclass(frozen=True)
class DistillItem:
    """One distillation item: the student's and the teacher's token ids, whose last `answer_len` tokens are
    the same assistant turn (answer and end of sequence), the tokens the loss is taken on."""

    student: list
    teacher: list
    answer_len: int


def distill_items(text, aug, tokenizer):
    """One DistillItem per QA pair of `aug`: the teacher sees the passage `text`, the student does not."""
    items = []
    for q, a in aug.qa:
        student, teacher = sequence_ids(tokenizer, q, a), sequence_ids(tokenizer, q, a, text)
        answer_len = len(tokenizer(answer_target(a), add_special_tokens=False)["input_ids"]) + (
            tokenizer.eos_token_id is not None
        )
        common = 0  # the shared suffix: the answer's tokens, unless the template's last token merged into them
        while common < min(len(student), len(teacher)) and student[-1 - common] == teacher[-1 - common]:
            common += 1
        items.append(DistillItem(student, teacher, min(common, answer_len, len(student) - 1)))
    return items

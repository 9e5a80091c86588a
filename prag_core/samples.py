"""Training sequences for one document, from its augmentation (DESIGN §6).

Every sequence is one chat exchange: the user turn `prompts.qa_messages(question,
[passage])` (or no passage), the assistant turn "The answer is {answer}.", then the
end-of-sequence token. It is tokenized exactly as serving tokenizes its prompt
(`prompts.render` + the answer prefix), so training and serving see the same tokens.
Loss is taken on every token, so sequences are plain token id lists, unpadded.

Constructions, for versions V = [original] + rewrites and QA pairs Q = q_1..q_m:
  prag   (the PRAG reference code) the first ⌈m/2⌉ pairs with every version in the prompt,
         the other pairs with no passage: 2·2 + 1 = 5 sequences for one rewrite and m = 3.
  cross  (the seed's D_i) every version with every pair: |V|·m sequences.
"""
from .prompts import answer_target, qa_messages, render

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

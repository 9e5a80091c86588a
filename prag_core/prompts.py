"""Every prompt prag sends to a model: answering (training and serving share it) and augmentation.

Answering. The user turn is `qa_messages(question, passages)`; the assistant turn
starts with ANSWER_PREFIX ("The answer is"). Training sequences end it with
`answer_target(answer)` = "The answer is {answer}.", and serving primes the
assistant turn with ANSWER_PREFIX and lets the model continue, so a document's
pair is trained on exactly the tokens it is later asked to produce.

Augmentation. `rewrite_messages(text)` asks for one rewrite of a document;
`qa_pairs_messages(text, n)` asks for n question/answer pairs in a strict,
line-based format ("Q: ...?" then "A: ...") that augment.parse_qa reads. Both show
one worked example first: small models copy a format they have seen far more
reliably than one they are told about.

PROMPT_VERSION is part of the augmentation cache key: change it whenever an
augmentation prompt, or how augment parses the replies, changes, so cached
outputs of the old ones are not reused.
"""

import torch

PROMPT_VERSION = 3  # 3: QA pairs round-trip filtered, repeating rewrites rejected
ANSWER_PREFIX = "The answer is"

_EXAMPLE = (
    "The Orlan Bridge crosses the river Tesk in the town of Mabrey. It was designed by the engineer "
    "Corin Vale and opened in 1903. The bridge is 412 metres long, and it is painted green every ten years."
)
_EXAMPLE_REWRITE = (
    "In 1903 the town of Mabrey opened the Orlan Bridge over the river Tesk. The engineer Corin Vale "
    "designed it. It is 412 metres long and gets a new coat of green paint every ten years."
)
_EXAMPLE_QA = [
    ("Who designed the Orlan Bridge?", "Corin Vale"),
    ("In what year did the Orlan Bridge open?", "1903"),
    ("How long is the Orlan Bridge?", "412 metres"),
    ("Which river does the Orlan Bridge cross?", "the Tesk"),
    ("What color is the Orlan Bridge painted?", "green"),
]


def qa_messages(question, passages=None):
    """The user turn that asks `question`, with the passages (a list of texts) in it when given."""
    question = question.strip()
    if not passages:
        return [{"role": "user", "content": f"Answer the question with a short answer.\n\nQuestion: {question}"}]
    context = "\n\n".join(f"Passage {i}: {p.strip()}" for i, p in enumerate(passages, 1))
    return [
        {
            "role": "user",
            "content": "Answer the question with a short answer, using the passages below "
            f"and what you know.\n\n{context}\n\nQuestion: {question}",
        }
    ]


def answer_target(answer):
    """The assistant turn a training sequence ends with."""
    return f"{ANSWER_PREFIX} {answer.strip().rstrip('.')}."


def render(tokenizer, messages):
    """The prompt text for `messages`, up to where the assistant's reply starts.

    With a chat template: the template with the generation prompt. Without one: the
    turns' contents separated by blank lines, then a newline."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return "\n\n".join(m["content"] for m in messages) + "\n"


def left_pad(prompts, pad_id):
    """(input_ids, attention_mask), both (len(prompts), longest), for token-id lists padded on the left,
    so every row's continuation starts at the same column (batched generate)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[row, width - len(p) :] = 1
    return ids, mask


def _rewrite_request(text):
    return (
        "Rewrite the passage below in your own words. Keep every name, number and fact, add nothing, "
        f"and write only the rewritten passage.\n\nPassage:\n{text.strip()}"
    )


def _qa_request(text, n):
    return (
        f"Write {n} different questions about the passage below. Each answer must be short (a name, a number "
        f"or a few words) and copied from the passage. Write each pair on two lines:\nQ: <question>?\n"
        f"A: <answer>\n\nPassage:\n{text.strip()}"
    )


def _qa_lines(pairs):
    return "\n".join(f"Q: {q}\nA: {a}" for q, a in pairs)


def rewrite_messages(text):
    """A one-shot chat asking for a rewrite of `text`."""
    return [
        {"role": "user", "content": _rewrite_request(_EXAMPLE)},
        {"role": "assistant", "content": _EXAMPLE_REWRITE},
        {"role": "user", "content": _rewrite_request(text)},
    ]


def qa_pairs_messages(text, n):
    """A one-shot chat asking for `n` question/answer pairs about `text`, as "Q: ...?" / "A: ..." lines."""
    example = _EXAMPLE_QA[: max(1, min(n, len(_EXAMPLE_QA)))]
    return [
        {"role": "user", "content": _qa_request(_EXAMPLE, len(example))},
        {"role": "assistant", "content": _qa_lines(example)},
        {"role": "user", "content": _qa_request(text, n)},
    ]

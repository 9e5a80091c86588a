"""Documents split into passages of about N words on sentence boundaries (`prag build --passage-words N`).

PRAG (like DPR's Wikipedia split) works on ~100-word passages: each is retrieved, augmented and trained on its
own. A document of at most N words stays whole, with its id; a longer one becomes the passages `id#1`,
`id#2`, ..., each as many whole sentences as fit in N words (a sentence longer than that is a passage of its
own). Words are whitespace-separated tokens. Every passage keeps its document's title, which the retrievers
index with it. The split depends on the text alone, so a re-run with the same text gives the same passages
and re-encodes nothing.
"""

import re

from prag_core.corpus import Document, text_sha256

_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")


def _chunks(text, limit):
    chunks, current, size = [], [], 0
    for sentence in _SENTENCE_END.split(text.strip()):
        words = len(sentence.split())
        if current and size + words > limit:
            chunks.append(" ".join(current))
            current, size = [], 0
        current.append(sentence)
        size += words
    return chunks + [" ".join(current)]


def split_passages(docs, words):
    """The passages of `docs` (corpus.Document list), in order; ValueError if a passage id is taken."""
    out = []
    for doc in docs:
        chunks = _chunks(doc.text, words) if len(doc.text.split()) > words else [doc.text]
        out += (
            [doc]
            if len(chunks) == 1
            else [
                Document(f"{doc.id}#{i}", chunk, doc.title, text_sha256(chunk), doc.line)
                for i, chunk in enumerate(chunks, 1)
            ]
        )
    seen = set()
    for passage in out:
        if passage.id in seen:
            raise ValueError(f"passage id {passage.id!r} is also the id of another document or passage")
        seen.add(passage.id)
    return out

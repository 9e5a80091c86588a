"""Answer metrics: exact match, token F1 (SQuAD) and acc (PopQA-style containment).

Every metric compares normalised text (SQuAD's normalisation: lowercase, drop
punctuation, drop the articles a/an/the, collapse whitespace) and takes the
maximum over the gold answer's aliases. One extension: Unicode punctuation
(curly quotes, dashes) is dropped too, not only ASCII.

For prediction tokens P and gold tokens G (as multisets), with c = |P ∩ G|:

    precision = c / |P|,  recall = c / |G|,  F1 = 2·precision·recall / (precision + recall)  (0 if c = 0)

If either side normalises to nothing, F1 is 1 when both do and 0 otherwise
(SQuAD v2's rule). acc is 1 when a normalised alias occurs in the normalised
prediction as whole words ("blue" is in "pale blue", not in "bluebell").

`ungrounded` flags broken language: an answer none of whose normalised words occurs
in the question or the retrieved passages ("Hugging Face", "RedLM.ortunately"), or
an empty one.
"""

import re
import string
import unicodedata
from collections import Counter

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation (official evaluation script, same order of steps)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION and not unicodedata.category(ch).startswith("P"))
    return " ".join(_ARTICLES.sub(" ", text).split())


def _best(score, prediction: str, answers: list[str]) -> float:
    if not answers:
        raise ValueError("a question needs at least one gold answer")
    pred = normalize_answer(prediction)
    return max(score(pred, normalize_answer(gold)) for gold in answers)


def _em(pred: str, gold: str) -> float:
    return float(pred == gold)


def _f1(pred: str, gold: str) -> float:
    pred_tokens, gold_tokens = pred.split(), gold.split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _acc(pred: str, gold: str) -> float:
    if not gold:  # an alias made only of articles/punctuation would be "in" everything
        return float(not pred)
    return float(f" {gold} " in f" {pred} ")


def exact_match(prediction: str, answers: list[str]) -> float:
    """1.0 if the normalised prediction equals a normalised alias, else 0.0."""
    return _best(_em, prediction, answers)


def f1(prediction: str, answers: list[str]) -> float:
    """Token-level F1 against the best-matching alias."""
    return _best(_f1, prediction, answers)


def acc(prediction: str, answers: list[str]) -> float:
    """1.0 if some normalised alias occurs, as whole words, in the normalised prediction."""
    return _best(_acc, prediction, answers)


def scores(prediction: str, answers: list[str]) -> dict[str, float]:
    """All three metrics, keyed as in results.json: {"em", "f1", "acc"}."""
    return {"em": exact_match(prediction, answers), "f1": f1(prediction, answers), "acc": acc(prediction, answers)}


def ungrounded(prediction: str, sources: list[str]) -> bool:
    """True when no normalised word of `prediction` occurs in any of `sources` (or it has none)."""
    words = set(normalize_answer(prediction).split())
    seen = {w for text in sources for w in normalize_answer(text).split()}
    return not words & seen

"""Document augmentation: n rewrites and m question/answer pairs per document (PRAG's offline step 1).

An LLM writes them (`LMGenerator`, by default the model that is trained). Rounds:
round 0 decodes greedily; rounds 1..retries sample (temperature 0.7, top-p 0.9)
under seed = round, only for the documents still lacking valid items. Output is
parsed strictly (`parse_qa`, `_valid_rewrite`), then filtered so that what is
trained is true:
  round trip  a QA pair is kept only if the same LLM, given the passage (the rag
              prompt), answers its question with its answer (the normalised answer
              occurs in the reply): this drops pairs whose answer belongs to another
              question of the passage;
  repeats     a rewrite that contains the whole passage, or one sentence twice, is
              rejected (the model sometimes pastes the passage twice).
Valid items are kept across rounds; `Augmentation.dropped` counts what each filter
removed. What is still missing after the last round comes from the deterministic
fallback (sentence rotation for rewrites, cloze questions on salient spans for QA),
and such a document is marked source="fallback".

`augment_documents` adds the cache: one JSONL line per document keyed by the
sha256 of its text plus the settings (generator, n, m, retries, prompt version),
appended (one write per line, flushed) after every batch, so a killed run keeps
what it finished; a re-run reads it back and only a changed text is redone.
"""

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from prag_core.errors import BuildError
from prag_core.files import append_line, write_jsonl_atomic
from prag_core.metrics import acc, normalize_answer
from prag_core.prompts import PROMPT_VERSION, left_pad, qa_messages, qa_pairs_messages, render, rewrite_messages

MAX_ANSWER_WORDS = 8
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[\"'A-Z0-9])")
_NUMBER = re.compile(r"\b\d[\d,.]*\d\b|\b\d\b")
_NAME = re.compile(r"\b[A-Z][\w'-]*(?:\s+(?:of\s+|de\s+)?[A-Z][\w'-]*)*")
_QA_LINE = re.compile(
    r"^\s*(?:\d+[.)]\s*)?(?:Q(?:uestion)?\s*\d*\s*[:.)])\s*(?P<q>.*?)"
    r"(?:\s+A(?:nswer)?\s*\d*\s*:\s*(?P<a>.*))?\s*$",
    re.IGNORECASE,
)
_A_LINE = re.compile(r"^\s*A(?:nswer)?\s*\d*\s*[:.)]\s*(?P<a>.*?)\s*$", re.IGNORECASE)


@dataclass
class Augmentation:
    """One document's augmented versions. source: "model" if the LLM wrote every item, "fallback" if any
    came from the deterministic augmenter; attempts: generation rounds the document took part in;
    dropped: how many parsed items each filter removed ({"qa_round_trip": n, "rewrite_repeat": n})."""

    rewrites: list
    qa: list  # [(question, answer), ...]
    source: str
    attempts: int
    dropped: dict = field(default_factory=dict)


class LMGenerator:
    """Chat completion with a causal LM: a batch of chats in, their replies out (left-padded batches)."""

    def __init__(self, model, tokenizer, batch_size=8):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.name = f"{type(model).__name__}:{getattr(model, 'name_or_path', '')}"

    @torch.inference_mode()
    def __call__(self, chats, max_new_tokens, seed=None):
        """One reply per chat; greedy when seed is None, else sampled after torch.manual_seed(seed)."""
        replies = []
        for start in range(0, len(chats), self.batch_size):
            prompts = [
                self.tokenizer(render(self.tokenizer, c), add_special_tokens=False)["input_ids"]
                for c in chats[start : start + self.batch_size]
            ]
            replies += self._generate(prompts, max_new_tokens, seed)
        return replies

    def _generate(self, prompts, max_new_tokens, seed):
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        ids, mask = left_pad(prompts, pad)
        width = ids.shape[1]
        sampling = {"do_sample": False}
        if seed is not None:
            torch.manual_seed(seed)
            sampling = {"do_sample": True, "temperature": 0.7, "top_p": 0.9}
        device = self.model.device
        out = self.model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            pad_token_id=pad,
            eos_token_id=self.tokenizer.eos_token_id,
            **sampling,
        )
        return self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)

    def count_tokens(self, text):
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def parse_qa(reply, text, seen=()):
    """The valid (question, answer) pairs in a model reply, in order.

    Accepted lines: "Q: ...?" followed by "A: ..." (numbering like "1." or "Q1:" allowed), or both on one
    line. A pair is valid when the question ends with '?'; the answer has 1..MAX_ANSWER_WORDS words, occurs
    in the document `text` (SQuAD-normalised, whole words: this drops invented answers) and not in the
    question (which would teach nothing); and neither the normalised question nor the normalised answer
    repeats one of `seen` (earlier pairs) or of this reply, so each pair teaches another fact."""
    pairs = []
    questions = {normalize_answer(q) for q, _ in seen}
    answers = {normalize_answer(a) for _, a in seen}
    question = None
    for line in reply.splitlines():
        q_match, a_match = _QA_LINE.match(line), _A_LINE.match(line)
        if q_match:
            question, answer = q_match["q"].strip(), q_match["a"]
        elif a_match and question is not None:
            answer = a_match["a"]
        else:
            question = None if line.strip() else question  # an answer must follow its question
            continue
        if answer is None:
            continue
        answer = answer.strip().rstrip(".").strip()
        q_key, a_key = normalize_answer(question), normalize_answer(answer)
        if (
            question.endswith("?")
            and len(question) > 1
            and a_key
            and len(answer.split()) <= MAX_ANSWER_WORDS
            and acc(text, [answer])
            and not acc(question, [answer])
            and q_key not in questions
            and a_key not in answers
        ):
            pairs.append((question, answer))
            questions.add(q_key)
            answers.add(a_key)
        question = None
    return pairs


def _valid_rewrite(reply, text):
    """The rewrite in a reply, or None: a different text of roughly the document's length."""
    reply = reply.strip()
    if not reply or " ".join(reply.split()) == " ".join(text.split()):
        return None
    return reply if 0.4 * len(text) <= len(reply) <= 2.5 * len(text) else None


def repeats(rewrite, text):
    """True when `rewrite` holds the whole passage `text`, or one of its sentences twice (normalised)."""
    if normalize_answer(text) in normalize_answer(rewrite):
        return True
    keys = [normalize_answer(s) for s in sentences(rewrite)]
    keys = [k for k in keys if k]
    return len(keys) != len(set(keys))


def round_trip(generator, text, pairs):
    """The pairs whose question the generator, given the passage, answers with the pair's answer."""
    if not pairs:
        return []
    replies = generator([qa_messages(q, [text]) for q, _ in pairs], 24)
    return [(q, a) for (q, a), reply in zip(pairs, replies) if acc(reply, [a])]


def sentences(text):
    return [s.strip() for s in _SENTENCE.split(text.strip()) if s.strip()]


def fallback_rewrites(text, n):
    """n deterministic rewrites: the sentences rotated by 1, 2, ... places."""
    parts = sentences(text)
    return [" ".join(parts[k % len(parts) :] + parts[: k % len(parts)]) for k in range(1, n + 1)]


def _salient_spans(sentence):
    """Numbers first, then capitalised names (a sentence's first word only as part of a longer name, and
    without a leading "The"/"A"/"An"), then, as a last resort, the other words, longest first."""
    spans = _NUMBER.findall(sentence)
    for match in _NAME.finditer(sentence):
        words = match.group().split()
        if match.start() == 0:
            words = words[1:] if len(words) == 1 or words[0] in ("The", "A", "An") else words
        if words:
            spans.append(" ".join(words))
    words = sorted(set(re.findall(r"\w[\w'-]*", sentence)) - set(spans), key=lambda w: (-len(w), w))
    return spans + words


def fallback_qa(text, n, seen=()):
    """Up to n cloze pairs: a sentence with one salient span blanked out, answered by the span.
    Spans are taken round-robin over the sentences (first span of every sentence, then the second, ...);
    a span that already answers a pair (of these or of `seen`, earlier pairs) is skipped."""
    per_sentence = [(s, _salient_spans(s)) for s in sentences(text)]
    pairs, used = [], {normalize_answer(a) for _, a in seen}
    for depth in range(max(len(spans) for _, spans in per_sentence)):
        for sentence, spans in per_sentence:
            if len(pairs) == n:
                return pairs
            if depth >= len(spans):
                continue
            span = spans[depth]
            if normalize_answer(span) in used:
                continue
            used.add(normalize_answer(span))
            blanked = re.sub(rf"(?<!\w){re.escape(span)}(?!\w)", "___", sentence, count=1).rstrip(".!?")
            pairs.append((f'Which word or number fills the blank in "{blanked}"?', span))
    return pairs


def check_words(docs, path):
    """BuildError naming the corpus line of the first document (corpus.Document) without a word (a letter or a
    digit), only punctuation or symbols: no question can be asked about it, so there is nothing to train its pair
    on (and no term to retrieve it by). Checked before the model loads."""
    for doc in docs:
        if not re.search(r"\w", doc.text):
            raise BuildError(
                f"{path}:{doc.line or '?'}: document {doc.id!r} has no word, only punctuation or symbols "
                f"({doc.text[:20]!r}): nothing to train on; remove it or give it text"
            )


def augment_many(texts, generator, n_rewrites=1, n_qa=3, retries=2):
    """Augmentations of several documents, generated in batches; generator None = fallback only."""
    rewrites = [[] for _ in texts]
    qa = [[] for _ in texts]
    attempts = [0] * len(texts)
    dropped = [{"qa_round_trip": 0, "rewrite_repeat": 0} for _ in texts]
    rounds = 1 + retries if generator is not None else 0
    for round_ in range(rounds):
        seed = None if round_ == 0 else round_
        need_rw = [i for i in range(len(texts)) if len(rewrites[i]) < n_rewrites]
        need_qa = [i for i in range(len(texts)) if len(qa[i]) < n_qa]
        for i in set(need_rw) | set(need_qa):
            attempts[i] += 1
        # one chat per missing rewrite, except greedy decoding, which would give the same reply each time
        jobs = [i for i in need_rw for _ in range(1 if seed is None else n_rewrites - len(rewrites[i]))]
        if jobs:
            longest = max(generator.count_tokens(texts[i]) for i in jobs)
            replies = generator([rewrite_messages(texts[i]) for i in jobs], int(1.5 * longest) + 16, seed)
            for i, reply in zip(jobs, replies):
                rw = _valid_rewrite(reply, texts[i])
                if rw and repeats(rw, texts[i]):
                    dropped[i]["rewrite_repeat"] += 1
                elif rw and rw not in rewrites[i] and len(rewrites[i]) < n_rewrites:
                    rewrites[i].append(rw)
        if need_qa:
            replies = generator([qa_pairs_messages(texts[i], n_qa) for i in need_qa], 32 * n_qa + 16, seed)
            for i, reply in zip(need_qa, replies):
                parsed = parse_qa(reply, texts[i], seen=qa[i])
                kept = round_trip(generator, texts[i], parsed)
                dropped[i]["qa_round_trip"] += len(parsed) - len(kept)
                qa[i] += kept[: n_qa - len(qa[i])]
        if not need_rw and not need_qa:
            break
    results = []
    for i, text in enumerate(texts):
        complete = len(rewrites[i]) == n_rewrites and len(qa[i]) == n_qa
        rw = rewrites[i] + fallback_rewrites(text, n_rewrites)[len(rewrites[i]) :]
        pairs = qa[i] + fallback_qa(text, n_qa - len(qa[i]), seen=qa[i])
        results.append(
            Augmentation(
                rw,
                [tuple(p) for p in pairs],
                "model" if complete else "fallback",
                attempts[i],
                dropped[i] if generator is not None else {},
            )
        )
    return results


def augment(text, generator, n_rewrites=1, n_qa=3, retries=2):
    """One document's Augmentation (see augment_many)."""
    return augment_many([text], generator, n_rewrites, n_qa, retries)[0]


class AugmentCache:
    """JSONL file of augmentations keyed by (document sha256, settings).

    Each line is appended with a single write and fsync. A crash can leave only the last line torn; opening
    the cache then rewrites the file atomically without it (its document is simply redone)."""

    def __init__(self, path, settings):
        self.path = Path(path)
        self.settings = settings
        self.entries = {}
        if not self.path.is_file():
            return
        raw = self.path.read_text(encoding="utf-8", errors="replace")
        rows = []
        for line in raw.splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows.append(row)
            try:
                if row["settings"] == settings:
                    self.entries[row["sha256"]] = Augmentation(
                        row["rewrites"],
                        [tuple(p) for p in row["qa"]],
                        row["source"],
                        row["attempts"],
                        row.get("dropped", {}),
                    )
            except (KeyError, TypeError):
                continue
        if raw and not raw.endswith("\n"):
            write_jsonl_atomic(self.path, rows)

    def get(self, sha256):
        return self.entries.get(sha256)

    def put(self, sha256, aug):
        self.entries[sha256] = aug
        append_line(
            self.path,
            json.dumps({"sha256": sha256, "settings": self.settings, **asdict(aug)}, ensure_ascii=False) + "\n",
        )


def cache_settings(generator, n_rewrites=1, n_qa=3, retries=2):
    """What an augmentation depends on besides its text: the second half of its cache key."""
    return {
        "generator": generator.name if generator is not None else "fallback",
        "n_rewrites": n_rewrites,
        "n_qa": n_qa,
        "retries": retries,
        "prompt_version": PROMPT_VERSION,
    }


def augment_documents(docs, generator, cache_path, n_rewrites=1, n_qa=3, retries=2, batch_size=8):
    """Augmentations of `docs` (objects with .text and .sha256), in order, through the cache at `cache_path`.

    Documents missing from the cache are augmented `batch_size` at a time, each batch appended to the cache
    as soon as it is done. generator None = the deterministic fallback only."""
    cache = AugmentCache(cache_path, cache_settings(generator, n_rewrites, n_qa, retries))
    todo = [d for d in {d.sha256: d for d in docs}.values() if cache.get(d.sha256) is None]
    with tqdm(total=len(todo), desc="augment", unit="doc", disable=not todo) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            for doc, aug in zip(batch, augment_many([d.text for d in batch], generator, n_rewrites, n_qa, retries)):
                cache.put(doc.sha256, aug)
            bar.update(len(batch))
    return [cache.get(d.sha256) for d in docs]

"""A hop variant that lost on dev: in round 2 the answer may not start with the bridge's first token.

Why it was tried: round 2 often repeats the bridge ("Tomas Hallbeck" twice, docs/decisions.md, Hops). A
question hops only to a document about its answer, so under that rule the bridge is never the final answer;
banning its first token (with and without a leading space) at the first generated position forces something
else. It lost on dev (prag 0.241 -> 0.217, combine 0.410 -> 0.367, comparison questions the most): the model,
kept off the bridge, does not find the second fact either. Kept here, outside the product, with its rows in
bench/results/hops.jsonl.

    python bench/experiments/hops_ban_bridge.py --workdir W --split dev [--modes prag,combine]
"""

import json
import sys
import tempfile
from pathlib import Path

import hops
from transformers import LogitsProcessor, LogitsProcessorList

import prag_core.answer.pipeline as pipeline

VARIANT = "2 hops, bridge banned in round 2"


class BanFirstToken(LogitsProcessor):
    """-inf for each row's banned token ids at the first generated position."""

    def __init__(self, width, banned):
        self.width, self.banned = width, banned

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] == self.width:
            for row, tokens in enumerate(self.banned):
                scores[row, list(tokens)] = -float("inf")
        return scores


def generate_banning_the_bridge(model_generate, tokenizer, rows, width):
    """model.generate with BanFirstToken for the rows past their first round."""
    banned = []
    for r in rows:
        prev = r.hops[-1].answer.strip() if r.hops else ""
        banned.append(
            {
                ids[0]
                for text in (" " + prev, prev)
                if prev and (ids := tokenizer.encode(text, add_special_tokens=False))
            }
        )

    def generate(**kwargs):
        return model_generate(**kwargs, logits_processor=LogitsProcessorList([BanFirstToken(width, banned)]))

    return generate


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else hops.BENCH / "results" / "hops.jsonl"
    original = pipeline.Pipeline._generate

    def patched(self, rows):
        real = self.kb.model.generate
        width = max(len(r.prompt) for r in rows)
        self.kb.model.generate = generate_banning_the_bridge(real, self.kb.tokenizer, rows, width)
        try:
            return original(self, rows)
        finally:
            self.kb.model.generate = real

    pipeline.Pipeline._generate = patched
    with tempfile.TemporaryDirectory() as tmp:
        rows_file = Path(tmp) / "rows.jsonl"
        args = [a for i, a in enumerate(argv) if a != "--out" and (i == 0 or argv[i - 1] != "--out")]
        hops.main([*args, "--variants", "2 hops: answer, subject rule", "--out", str(rows_file)])
        with out.open("a") as f:
            for row in map(json.loads, rows_file.read_text().splitlines()):
                f.write(json.dumps({**row, "variant": VARIANT, "prompt": "question, bridge banned"}) + "\n")


if __name__ == "__main__":
    main()

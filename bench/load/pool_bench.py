"""What loading a document into the pool costs, next to one decode step (prag_core/model/pool.py).

SmolLM2-135M's configuration with random weights (the shape is what matters), injected; a pool of 32 slots at
rank 2, max_rows 1. Timed with perf_counter, medians over --repeat, in one run:

    step    one decode step at batch 1 (one token, a KV cache of --context tokens), 3 documents assigned
    load    pool.load of a document not in the pool (its A and B copied into a slot, one per projection)
    base    the same step with no document assigned (the pool still active: the shrink over every slot runs)
    plain   the same step outside the pool (no documents: F.linear alone)

    python bench/load/pool_bench.py [--threads 1] [--out bench/results/pool.json]

Target (serving issue): a load costs ≤ 5 % of one decode step of SmolLM2 (the seed's claim: about 1 %).
"""

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from prag_core.model.inject import inject
from prag_core.model.pool import DocumentPool
from prag_core.pairs.doc_params import DocParams

SMOLLM2 = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)


def median_s(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--context", type=int, default=64, help="tokens already in the KV cache")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results" / "pool.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = inject(LlamaForCausalLM(LlamaConfig(**SMOLLM2)).eval())
    docs = [DocParams.init(model, 2, 16.0, init="document", doc_key=str(i)) for i in range(40)]
    for d in docs:
        d.pairs = {p: (torch.randn(a.shape) * 0.02, b) for p, (a, b) in d.pairs.items()}
    pool = DocumentPool(model, rank=2, alpha=16.0, max_rows=1)
    prompt = torch.randint(0, SMOLLM2["vocab_size"], (1, args.context))
    with torch.no_grad():
        cache = model(prompt, use_cache=True).past_key_values  # transformers 5.25 also calls it `cache`
    token = torch.randint(0, SMOLLM2["vocab_size"], (1, 1))
    position = torch.tensor([[args.context]])

    def step():
        with torch.no_grad():
            # crop back so every step sees the same cache length
            model(token, past_key_values=cache, position_ids=position, use_cache=True)
            cache.crop(-1)

    def pooled_step():
        with pool.activate():
            step()

    pool.assign(0, [pool.load(f"d{i}", docs[i]) for i in range(3)], [0.8, 0.15, 0.05])
    loads = iter(range(3, len(docs)))
    rows = {"step_s": median_s(pooled_step, args.repeat)}
    rows["load_s"] = median_s(lambda: pool.load(f"d{(i := next(loads))}", docs[i]), min(args.repeat, len(docs) - 4))
    pool.release(0)
    rows["base_s"] = median_s(pooled_step, args.repeat)
    rows["plain_s"] = median_s(step, args.repeat)
    rows.update(
        load_over_step=rows["load_s"] / rows["step_s"],
        pool_over_plain=rows["base_s"] / rows["plain_s"],
        model="SmolLM2-135M config, random weights, fp32",
        slots=pool.slots,
        rank=2,
        threads=args.threads,
        context=args.context,
        machine=os.uname().machine,
        cpus=os.cpu_count(),
        loadavg=round(os.getloadavg()[0], 2),
        torch=torch.__version__,
    )
    print(json.dumps(rows, indent=1))
    args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()

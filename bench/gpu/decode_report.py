"""Decode tokens/s of an injected model and documents/s of batched training: the GPU report's model-level rows
(bench/gpu/kernel_report.py has the kernel-level ones and, run with --render after this, states the decode targets
from this JSON; `make bench-gpu` runs both).

    PYTHONPATH=kernels:. python bench/gpu/decode_report.py --out OUT/decode.json      H100/H200: ~2 min
    PYTHONPATH=kernels:. python bench/gpu/decode_report.py --cpu                      dry run, tiny model, < 30 s

Model: random weights with the real config of Llama-3.2-1B (bf16; --cpu: a 2-layer Llama, fp32); no model files
travel to a lent GPU. Decode: greedy generate of NEW tokens after a PROMPT-token prompt (every row runs to the end),
batch 1, 4 and 16, 3 documents per row (rank 2, α 16) drawn from a library of 32, tokens/s = batch · NEW / wall:
    base            the injected model with no document
    fused           the document pool (model/pool.py) with its default 32 slots, each row its 3 documents: the op as
                    the dispatch table picks it (the kernel report's per-row keys are these calls': 3 of 32, R_PAD 64)
    peft            PEFT's mixed-adapter batch: one LoRA adapter per row holding its 3 documents (rank 6, the same
                    sum), `adapter_names` per row: the peer a user would pick today; its logits are checked against
                    the fused ones
    merge           W += ΔW of one row's documents, generate, restore: one document set for the whole batch
Order (--budget S cuts from the end: no row starts after S seconds, a CUDA-graph row not within GRAPH_RESERVE of it):
every variant eager per batch, then training, then base and fused with CUDA graphs per batch (Hugging Face's
generate compiles the decode step with torch.compile mode "reduce-overhead" over the static cache; each graph row
compiles afresh, since a captured graph replays the kernels of the documents active at capture; the first generate,
which compiles, is not timed). Training: train_documents on B documents together (B = 1, 8, 32), one epoch of 4
sequences of 64 tokens each, documents/s.

Writes a markdown table to stdout and --md (default: --out with .md), raw rows to --out (JSON, rewritten after
every row, so a run cut short keeps what it measured).
"""

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

PARSER = argparse.ArgumentParser(description=__doc__.splitlines()[0])
PARSER.add_argument("--cpu", action="store_true", help="dry run: a tiny model, eager only, no CUDA rows")
PARSER.add_argument("--out", type=Path, help="raw JSON here (default: none)")
PARSER.add_argument("--md", type=Path, help="markdown here too (default: --out with suffix .md)")
PARSER.add_argument("--budget", type=float, default=None, help="seconds (default 120 on a GPU, 60 with --cpu)")
OPTIONS = PARSER.parse_args()
if OPTIONS.cpu:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM  # noqa: E402

from prag_core.model.inject import inject, merged_documents  # noqa: E402
from prag_core.model.pool import DocumentPool  # noqa: E402
from prag_core.offline.train import train_documents  # noqa: E402
from prag_core.offline.train_config import TrainConfig  # noqa: E402
from prag_core.pairs.doc_params import DocParams  # noqa: E402

CPU = OPTIONS.cpu
if CPU:
    torch.set_num_threads(1)  # a tiny model: on a loaded machine thread barriers cost more than threads give
DEVICE = "cpu" if CPU else "cuda"
DTYPE = torch.float32 if CPU else torch.bfloat16
BUDGET = OPTIONS.budget or (60.0 if CPU else 120.0)
GRAPH_RESERVE = 40.0  # seconds a CUDA-graph row may take (its compile): none starts with less left
START = time.perf_counter()
RANK, ALPHA, DOCS, LIBRARY = 2, 16.0, 3, 32  # 3 documents per row of the pool's default 32, as prag serve runs
PROMPT, NEW = (8, 4) if CPU else (64, 32)
BATCHES = (1, 4) if CPU else (1, 4, 16)
TRAIN_BATCHES = (1, 2) if CPU else (1, 8, 32)
MODEL, CONFIG = "Llama-3.2-1B", dict(  # the real config's sizes (random weights: speed does not depend on them)
    hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
    vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0,
)  # fmt: skip
if CPU:
    MODEL, CONFIG = "tiny Llama", dict(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=64,
    )  # fmt: skip
REPORT = {"meta": {}, "decode": [], "train": [], "errors": []}
PAD = argparse.Namespace(pad_token_id=0)  # all train_documents reads of a tokenizer for next-token training


def left():
    return BUDGET - (time.perf_counter() - START)


def dump():
    REPORT["meta"]["elapsed_s"] = round(time.perf_counter() - START, 1)
    if OPTIONS.out:
        OPTIONS.out.parent.mkdir(parents=True, exist_ok=True)
        OPTIONS.out.write_text(json.dumps(REPORT, indent=1))


def make_model():
    torch.manual_seed(0)
    config = LlamaConfig(**CONFIG, max_position_embeddings=4096)
    with torch.device(DEVICE):
        model = LlamaForCausalLM(config).to(DTYPE).eval()
    model.generation_config = GenerationConfig(pad_token_id=0, eos_token_id=None, bos_token_id=None)
    return inject(model)


def documents(model, n, seed):
    """n DocParams with random A and B (DocParams.init gives A = 0) on the model's device and dtype."""
    gen = torch.Generator(DEVICE).manual_seed(seed)
    docs = []
    for _ in range(n):
        doc = DocParams.init(model, RANK, ALPHA)
        doc.pairs = {
            path: tuple(torch.randn(t.shape, generator=gen, device=DEVICE, dtype=DTYPE) * 0.02 for t in pair)
            for path, pair in doc.pairs.items()
        }
        docs.append(doc)
    return docs


def rows_documents(library, batch):
    """DOCS documents per row, drawn in turn from the library: at batch 4 and 16 rows share some, as popular
    documents are."""
    return [[library[(DOCS * i + j) % len(library)] for j in range(DOCS)] for i in range(batch)]


def pool_of(model, per_row):
    """A pool of LIBRARY slots holding every row's documents, row i assigned its own."""
    pool = DocumentPool(model, RANK, ALPHA, slots=LIBRARY, max_rows=len(per_row))
    for i, docs in enumerate(per_row):
        pool.assign(i, [pool.load(id(d), d) for d in docs])
    return pool


def sync():
    if not CPU:
        torch.cuda.synchronize()


def timed_generate(model, ids, graphs, **kwargs):
    """Seconds of one greedy generate of NEW tokens (after an untimed one: compiles, allocator, pool loads)."""
    config = dict(max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, cache_implementation="static")
    config["disable_compile"] = not graphs
    with torch.inference_mode():
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **config, **kwargs)
        sync()
        start = time.perf_counter()
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **config, **kwargs)
        sync()
    return time.perf_counter() - start


def fresh_compile(model):
    """Forget the compiled decode step and its captured CUDA graphs: the next generate with graphs compiles and
    captures again, under the documents active then (a graph replays the kernels it captured, whatever is active)."""
    torch._dynamo.reset()  # also resets the CUDA-graph trees
    model.__dict__.pop("_compiled_call", None)


def peft_model(model, per_row):
    """(PEFT model, adapter names): one adapter per row holding its documents side by side (rank DOCS·RANK)."""
    from peft import LoraConfig, get_peft_model

    from prag_core.model.inject import eject

    eject(model)
    targets = sorted({path.rsplit(".", 1)[1] for path in per_row[0][0].pairs})
    names = []
    for i, docs in enumerate(per_row):
        name = f"row{i}"
        config = LoraConfig(r=DOCS * RANK, lora_alpha=ALPHA * DOCS * RANK, target_modules=targets)
        if i == 0:
            model = get_peft_model(model, config, adapter_name=name)
        else:
            model.add_adapter(name, config)
        # PEFT computes (x Aᵖᵀ) Bᵖᵀ · lora_alpha / r: Aᵖ = our Bᵀ (r, in), Bᵖ = our A (out, r); lora_alpha = α·r
        with torch.no_grad():
            for path in docs[0].pairs:
                layer = model.base_model.model.get_submodule(path)
                layer.lora_A[name].weight.copy_(torch.cat([d.pairs[path][1] for d in docs], 1).T)
                layer.lora_B[name].weight.copy_(torch.cat([d.pairs[path][0] for d in docs], 1))
        names.append(name)
    return model, names


def eager_rows(model, library):
    """base, fused, merge and PEFT, eager, at every batch; returns the injected model (PEFT's rows unload it)."""
    for batch in BATCHES:
        ids = torch.randint(1, model.config.vocab_size, (batch, PROMPT), device=DEVICE)
        per_row = rows_documents(library, batch)
        pool = pool_of(model, per_row)

        def fused(pool=pool, ids=ids):
            with pool.activate():
                return timed_generate(model, ids, False)

        def merge(docs=per_row[0], ids=ids):
            with merged_documents(model, docs):
                return timed_generate(model, ids, False)

        row(batch, "base", False, lambda ids=ids: timed_generate(model, ids, False))
        row(batch, "fused", False, fused)
        row(batch, "merge", False, merge)
        with torch.inference_mode(), pool.activate():
            expected = model(input_ids=ids).logits.float()
        model = peft_row(batch, model, ids, per_row, expected)
    return model


def graph_rows(model, library):
    """base and fused with CUDA graphs at every batch, each compiled afresh."""
    for batch in BATCHES:
        ids = torch.randint(1, model.config.vocab_size, (batch, PROMPT), device=DEVICE)
        pool = pool_of(model, rows_documents(library, batch))

        def base(ids=ids):
            fresh_compile(model)
            return timed_generate(model, ids, True)

        def fused(pool=pool, ids=ids):
            fresh_compile(model)
            with pool.activate():
                return timed_generate(model, ids, True)

        row(batch, "base", True, base, reserve=GRAPH_RESERVE)
        row(batch, "fused", True, fused, reserve=GRAPH_RESERVE)


def peft_row(batch, model, ids, per_row, expected):
    """PEFT's mixed-adapter batch on the same rows; its logits are checked against the fused ones. Returns the
    injected model again."""
    try:
        import peft  # noqa: F401
    except ImportError:
        REPORT["decode"].append(
            dict(model=MODEL, batch=batch, variant="peft", graphs=False, status="skipped (no peft here)")
        )
        return model
    try:
        mixed, names = peft_model(model, per_row)
    except Exception as e:  # noqa: BLE001  PEFT refused the model: the row says why, a fresh model goes on
        entry = dict(model=MODEL, batch=batch, variant="peft", graphs=False)
        failed(entry, e)
        REPORT["decode"].append(entry)
        return make_model()
    mixed.eval()

    def run():
        with torch.inference_mode():
            got = mixed(input_ids=ids, adapter_names=names).logits.float()
        err = float((got - expected).norm() / expected.norm())
        if err > (1e-4 if CPU else 2e-2):
            raise AssertionError(f"PEFT's logits differ from the fused ones: relative error {err:.2e}")
        return timed_generate(mixed, ids, False, adapter_names=names)

    row(batch, "peft", False, run)
    return inject(mixed.unload())


def row(batch, variant, graphs, run, reserve=0.0):
    entry = dict(model=MODEL, batch=batch, variant=variant, graphs=graphs)
    if left() < reserve or left() < 0:
        entry["status"] = "skipped (time budget)"
    else:
        try:
            seconds = run()
            entry.update(status="ok", seconds=round(seconds, 4), tokens_per_s=round(batch * NEW / seconds, 1))
        except Exception as e:  # noqa: BLE001  a variant that fails is a row with its error, not a crash
            failed(entry, e)
    print(f"decode {entry}", file=sys.stderr, flush=True)
    REPORT["decode"].append(entry)
    dump()


def failed(entry, e):
    """The entry's status is the error; its trace goes to the JSON's errors."""
    entry["status"] = f"error: {type(e).__name__}: {str(e)[:200]}"
    REPORT["errors"].append(dict(what=dict(entry), trace=traceback.format_exc()[-2000:]))


def train_rows(model):
    for batch in TRAIN_BATCHES:
        entry = dict(model=MODEL, documents=batch)
        if left() < 0:
            REPORT["train"].append({**entry, "status": "skipped (time budget)"})
            continue
        samples = [[torch.randint(1, 60, (64 if not CPU else 8,)).tolist() for _ in range(4)] for _ in range(batch)]
        config = TrainConfig(rank=RANK, alpha=ALPHA, epochs=1, dtype="float32" if CPU else "bfloat16")
        try:
            train_documents(model, PAD, samples[:1], config, progress=False)  # warm-up: kernels, allocator
            sync()
            start = time.perf_counter()
            train_documents(model, PAD, samples, config, progress=False)
            sync()
            seconds = time.perf_counter() - start
            entry.update(status="ok", seconds=round(seconds, 3), docs_per_s=round(batch / seconds, 2))
        except Exception as e:  # noqa: BLE001
            failed(entry, e)
        print(f"train {entry}", file=sys.stderr, flush=True)
        REPORT["train"].append(entry)
        dump()


def markdown():
    meta = REPORT["meta"]
    lines = [
        f"# Decode and training on {meta['device']}",
        "",
        f"torch {meta['torch']}, transformers {meta['transformers']}, {meta['dtype']}; {MODEL} (random weights); "
        f"{PROMPT}-token prompts, {NEW} new tokens, {DOCS} documents per row of {LIBRARY} loaded (rank {RANK}); "
        f"{meta['elapsed_s']} s.",
        "",
        "| batch | variant | eager tokens/s | CUDA graphs tokens/s | fused / this (eager) | fused / this (graphs) |",
        "|---|---|---|---|---|---|",
    ]
    rows = {(r["batch"], r["variant"], r.get("graphs")): r for r in REPORT["decode"]}

    def tps(batch, variant, graphs):
        r = rows.get((batch, variant, graphs))
        return r.get("tokens_per_s") if r else None

    def cell(batch, variant, graphs):
        r = rows.get((batch, variant, graphs))
        return f"{r['tokens_per_s']:.0f}" if r and r.get("tokens_per_s") else (r or {}).get("status", "–")

    def fused_over(batch, variant, graphs):
        fused, this = tps(batch, "fused", graphs), tps(batch, variant, graphs)
        return f"{fused / this:.2f}×" if fused and this else "–"

    for batch, variant in dict.fromkeys((b, v) for b, v, _ in rows):
        lines.append(
            f"| {batch} | {variant} | {cell(batch, variant, False)} | {cell(batch, variant, True)} "
            f"| {fused_over(batch, variant, False)} | {fused_over(batch, variant, True)} |"
        )
    lines += ["", "| documents trained together | documents/s |", "|---|---|"]
    for r in REPORT["train"]:
        lines.append(f"| {r['documents']} | {r.get('docs_per_s', r['status'])} |")
    if REPORT["errors"]:
        lines += ["", f"{len(REPORT['errors'])} errors (traces in the JSON)."]
    return "\n".join(lines) + "\n"


def main():
    if not CPU and not torch.cuda.is_available():
        sys.exit("decode_report.py: no CUDA GPU here; run with --cpu for the dry run")
    import transformers

    REPORT["meta"] = dict(
        cpu_mode=CPU,
        device=torch.cuda.get_device_name() if not CPU else "CPU (dry run)",
        model=MODEL,
        torch=torch.__version__,
        transformers=transformers.__version__,
        dtype=str(DTYPE).removeprefix("torch."),
    )
    model = make_model()
    library = documents(model, LIBRARY, seed=1)
    model = eager_rows(model, library)
    train_rows(model)
    if not CPU:
        graph_rows(model, library)
    text = markdown()
    print(text)
    md = OPTIONS.md or (OPTIONS.out.with_suffix(".md") if OPTIONS.out else None)
    if md:
        md.write_text(text)
    dump()
    return 0


if __name__ == "__main__":
    sys.exit(main())

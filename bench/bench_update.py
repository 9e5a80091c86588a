"""Suite 2, update cost per query: merge vs fused, on the embedded SmolLM2 and on random Llama models
with Llama-3.2-1B and Llama-3-8B FFN shapes (few layers, see common.LAYERS_USED).

    update    apply the documents and take them off again, nothing else:
              merge = W += α·A_cat B_catᵀ on every FFN projection, then the exact restore
              fused = entering and leaving use_documents (the pairs are stacked, weights untouched)
    question  the whole question: update + generate exactly NEW_TOKENS tokens greedily + restore;
              vanilla = the same generation with no documents

Documents are random rank-2 pairs (their values do not change the work; the generation length is fixed).
"""
from functools import lru_cache

import pytest
import torch

from common import LAYERS_USED, SHAPES, SMOKE, build_model, documents, ffn_params_per_layer, rounds
from prag_core.inject import merged_documents, use_documents

NEW_TOKENS = 4 if SMOKE else 20
MODELS = list(SHAPES)
DOC_COUNTS = (1, 3) if SMOKE else (1, 3, 8)
MAIN_DOCS = 3


def _cases():
    """(model, kind, method, docs), model by model; the document-count sweep on the first model only."""
    cases = []
    for name in MODELS:
        counts = DOC_COUNTS if name == MODELS[0] else (MAIN_DOCS,)
        updates = [(m, d) for m in ("fused", "merge") for d in counts]
        cases += [(name, "update", m, d) for m, d in updates]
        cases += [(name, "question", m, d) for m, d in [("vanilla", 0)] + updates]
    return cases


CASES = _cases()


@lru_cache(maxsize=1)  # one model alive at a time; CASES go model by model
def loaded(name):
    """(injected model, prompt ids, {count: documents})."""
    model, prompt = build_model(name)
    return model, prompt, {n: documents(model, n, seed=n) for n in DOC_COUNTS}


def applied(model, method, docs):
    """The context manager that applies `docs` by `method` (vanilla: none)."""
    if method == "merge":
        return merged_documents(model, docs)
    return use_documents(model, docs if method == "fused" else [])


@pytest.mark.parametrize("name,kind,method,docs", CASES, ids=[f"{n}-{k}-{m}-{d}docs" for n, k, m, d in CASES])
def test_update(benchmark, name, kind, method, docs):
    model, prompt, all_docs = loaded(name)
    chosen = all_docs.get(docs, [])
    mask = torch.ones_like(prompt)
    benchmark.group = f"{kind} {name}"
    benchmark.extra_info.update(suite="update", kind=kind, model=name, method=method, docs=docs,
                                layers_used=LAYERS_USED.get(name, SHAPES[name][2]), layers_full=SHAPES[name][2],
                                ffn_params_per_layer=ffn_params_per_layer(name), new_tokens=NEW_TOKENS)

    def apply_and_restore():
        with applied(model, method, chosen):
            pass

    def answer():
        with applied(model, method, chosen):
            return model.generate(input_ids=prompt, attention_mask=mask, do_sample=False, pad_token_id=0,
                                  min_new_tokens=NEW_TOKENS, max_new_tokens=NEW_TOKENS)

    fn, full_rounds = (apply_and_restore, 10) if kind == "update" else (answer, 5 if name == MODELS[0] else 3)
    with torch.inference_mode():
        benchmark.pedantic(fn, rounds=rounds(full_rounds), warmup_rounds=0 if SMOKE else 1)

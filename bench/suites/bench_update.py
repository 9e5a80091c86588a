"""Suite 2, update cost per query: merge vs fused, on the embedded SmolLM2 and on random Llama models
with Llama-3.2-1B and Llama-3-8B FFN shapes (few layers, see common.LAYERS_USED).

    update    apply the documents and take them off again, nothing else:
              merge = W += α·A_cat B_catᵀ on every FFN projection, then the exact restore
              fused = entering and leaving use_documents (the pairs are stacked, weights untouched)
    question  the whole question: update + generate exactly NEW_TOKENS tokens greedily + restore;
              vanilla = the same generation with no documents

The variants of each benchmark run interleaved, round by round (common.interleave), so their
ratios hold on a machine shared with other work. Documents are random rank-2 pairs: their values
do not change the work, and the generation length is fixed.
"""

from functools import lru_cache

import pytest
import torch
from common import LAYERS_USED, SHAPES, SMOKE, build_model, documents, ffn_params_per_layer, interleave, rounds

from prag_core.model.inject import merged_documents, use_documents

NEW_TOKENS = 4 if SMOKE else 20
MODELS = list(SHAPES)
DOC_COUNTS = (1, 3) if SMOKE else (1, 3, 8)
MAIN_DOCS = 3
METHODS = {"update": ("merge", "fused"), "question": ("vanilla", "fused", "merge")}
# model by model (one alive at a time); the document-count sweep on the first model only
CASES = [
    (name, kind, docs)
    for name in MODELS
    for kind in METHODS
    for docs in (DOC_COUNTS if name == MODELS[0] else (MAIN_DOCS,))
]


@lru_cache(maxsize=1)
def loaded(name):
    """(injected model, prompt ids, {count: documents})."""
    model, prompt = build_model(name)
    return model, prompt, {n: documents(model, n, seed=n) for n in DOC_COUNTS}


def applied(model, method, docs):
    """The context manager that applies `docs` by `method` (vanilla: none)."""
    if method == "merge":
        return merged_documents(model, docs)
    return use_documents(model, docs if method == "fused" else [])


@pytest.mark.parametrize("name,kind,docs", CASES, ids=[f"{n}-{k}-{d}docs" for n, k, d in CASES])
def test_update(benchmark, name, kind, docs):
    model, prompt, all_docs = loaded(name)
    mask = torch.ones_like(prompt)

    def variant(method):
        def apply_and_restore(_):
            with applied(model, method, all_docs[docs]):
                pass

        def answer(_):
            with applied(model, method, all_docs[docs]):
                model.generate(
                    input_ids=prompt,
                    attention_mask=mask,
                    do_sample=False,
                    pad_token_id=0,
                    min_new_tokens=NEW_TOKENS,
                    max_new_tokens=NEW_TOKENS,
                )

        return {"method": method}, apply_and_restore if kind == "update" else answer

    benchmark.group = f"{kind} {name}"
    benchmark.extra_info.update(
        suite="update",
        kind=kind,
        model=name,
        docs=docs,
        layers_used=LAYERS_USED.get(name, SHAPES[name][2]),
        layers_full=SHAPES[name][2],
        ffn_params_per_layer=ffn_params_per_layer(name),
        new_tokens=NEW_TOKENS,
    )
    full_rounds = 10 if kind == "update" else 5 if docs == MAIN_DOCS and name == MODELS[0] else 3
    with torch.inference_mode():
        interleave(
            benchmark, {m: variant(m) for m in METHODS[kind]}, rounds(full_rounds), warmup_rounds=0 if SMOKE else 1
        )

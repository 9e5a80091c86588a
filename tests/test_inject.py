"""The injection layer on tiny random models of every supported architecture, and once on SmolLM2."""

import threading

import pytest
import torch
from tiny import TINY_ARCHS, random_doc_params, tiny_model

from prag_core.model.inject import (
    InjectedLinear,
    active_documents,
    eject,
    ffn_module_paths,
    inject,
    merged_documents,
    use_documents,
)
from prag_core.pairs.doc_params import DocParams


def rel(y, ref):
    return ((y - ref).norm() / ref.norm()).item()


def prompts(batch=3, seq=11, seed=0):
    return torch.randint(3, 250, (batch, seq), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def logits(model, ids):
    return model(ids).logits


@pytest.fixture(scope="module", params=TINY_ARCHS)
def arch(request):
    """(model_type, injected model, its logits before injection, its state_dict before injection)."""
    model = tiny_model(request.param)
    base = logits(model, prompts())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    inject(model)
    return request.param, model, base, state


def test_no_documents_is_bit_identical(arch):
    _, model, base, state = arch
    assert torch.equal(logits(model, prompts()), base)
    with use_documents(model, []):
        assert torch.equal(logits(model, prompts()), base)
    assert list(model.state_dict()) == list(state)  # same keys, same order
    for path in ffn_module_paths(model):
        assert isinstance(model.get_submodule(path), InjectedLinear)


@pytest.mark.parametrize("n_docs", [1, 3])
def test_fused_equals_merged_and_merge_restores_exactly(arch, n_docs):
    _, model, base, state = arch
    docs = random_doc_params(model, n_docs, seed=n_docs)
    with use_documents(model, docs):
        fused = logits(model, prompts())
    with merged_documents(model, docs):
        merged = logits(model, prompts())
    assert rel(fused, base) > 1e-3  # the documents matter
    assert rel(fused, merged) < 1e-5
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert torch.equal(logits(model, prompts()), base)


def test_per_row_sets_equal_each_row_alone(arch):
    _, model, base, _ = arch
    d0, d1, d2 = random_doc_params(model, 3, seed=7)
    sets = [[d0], [d1, d2], [], [d2, d0, d1]]
    ids = prompts(batch=4)
    with use_documents(model, sets):
        together = logits(model, ids)
    for i, docs in enumerate(sets):
        with use_documents(model, docs):
            alone = logits(model, ids[i : i + 1])
        assert rel(together[i], alone[0]) < 1e-5, i
    assert rel(together[0], together[1]) > 1e-3
    assert rel(together[2], base[2]) < 1e-5  # the empty row is the base model


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "phi3"])
def test_generate_per_row_and_merged(model_type):
    """Cached decode steps see x of shape (batch, 1, in); rows must still get their own documents."""
    model = inject(tiny_model(model_type))
    d0, d1 = random_doc_params(model, 2, seed=3, std=0.05)
    ids = prompts(batch=1, seq=6).repeat(2, 1)  # same prompt: only the documents tell the rows apart
    kw = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    with use_documents(model, [[d0], [d1]]):
        together = model.generate(ids, **kw)
    assert not torch.equal(together[0], together[1])
    for row, doc in enumerate([d0, d1]):
        with use_documents(model, [doc]):
            alone = model.generate(ids[:1], **kw)
        with merged_documents(model, [doc]):
            merged = model.generate(ids[:1], **kw)
        assert torch.equal(together[row], alone[0])
        assert torch.equal(alone, merged)
    assert not torch.equal(model.generate(ids[:1], **kw)[0], together[0])


def test_nesting_inner_replaces_outer_per_model():
    model, other = inject(tiny_model("llama", seed=0)), inject(tiny_model("llama", seed=1))
    d0, d1 = random_doc_params(model, 2, seed=5)
    ids = prompts()
    base, other_base = logits(model, ids), logits(other, ids)
    with use_documents(model, [d0]):
        only_d0 = logits(model, ids)
    with use_documents(model, [d1]):
        only_d1 = logits(model, ids)
    with use_documents(other, [d1]):
        other_d1 = logits(other, ids)
    with use_documents(model, [d0]):
        with use_documents(other, [d1]):  # another model: both active
            assert torch.equal(logits(model, ids), only_d0)
            assert torch.equal(logits(other, ids), other_d1)
            with use_documents(model, [d1]):
                assert torch.equal(logits(model, ids), only_d1)
                assert torch.equal(logits(other, ids), other_d1)
            with use_documents(model, []):
                assert torch.equal(logits(model, ids), base)
            assert torch.equal(logits(model, ids), only_d0)
        assert torch.equal(logits(other, ids), other_base)
    assert torch.equal(logits(model, ids), base)
    assert active_documents() == {}


def test_two_threads_same_model_different_documents():
    model = inject(tiny_model("llama"))
    docs = random_doc_params(model, 2, seed=11)
    ids = prompts(batch=2)
    alone = []
    for doc in docs:
        with use_documents(model, [doc]):
            alone.append(logits(model, ids))
    barrier, results, errors = threading.Barrier(2), [[], []], []

    def work(i):
        try:
            with use_documents(model, [docs[i]]):
                barrier.wait()
                for _ in range(15):
                    results[i].append(logits(model, ids))
        except Exception as err:  # surfaced by the assert below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert rel(alone[0], alone[1]) > 1e-3
    for i in range(2):
        for got in results[i]:
            assert torch.allclose(got, alone[i], rtol=1e-6, atol=1e-6)


def test_asyncio_tasks_keep_their_own_documents():
    import asyncio

    model = inject(tiny_model("qwen3"))
    docs = random_doc_params(model, 2, seed=12)
    ids = prompts(batch=1)
    alone = []
    for doc in docs:
        with use_documents(model, [doc]):
            alone.append(logits(model, ids))

    async def task(doc):
        out = []
        with use_documents(model, [doc]):
            for _ in range(3):
                await asyncio.sleep(0)  # let the other task run, inside its own context
                out.append(logits(model, ids))
        return out

    async def both():
        return await asyncio.gather(task(docs[0]), task(docs[1]))

    for i, outs in enumerate(asyncio.run(both())):
        assert all(torch.equal(got, alone[i]) for got in outs)


def test_bf16_model_with_fp32_documents():
    model = inject(tiny_model("mistral").to(torch.bfloat16))
    docs = random_doc_params(model, 3, seed=4)
    base = logits(model, prompts()).float()
    with use_documents(model, docs):
        fused = logits(model, prompts())
    with merged_documents(model, docs):
        merged = logits(model, prompts()).float()
    assert fused.dtype == torch.bfloat16
    assert rel(fused.float(), merged) < 1.5e-2 and rel(fused.float(), base) > 3e-2


def test_exceptions_restore_everything():
    model = inject(tiny_model("gemma2"))
    ids = prompts()
    base = logits(model, ids)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    docs = random_doc_params(model, 2)
    with pytest.raises(RuntimeError, match="boom"):
        with use_documents(model, docs):
            raise RuntimeError("boom")
    assert active_documents() == {}
    with pytest.raises(RuntimeError, match="boom"):
        with merged_documents(model, docs):
            assert rel(logits(model, ids), base) > 1e-3
            raise RuntimeError("boom")
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert torch.equal(logits(model, ids), base)


def test_inject_twice_is_a_noop_and_eject_restores_the_originals():
    model = tiny_model("gpt2")
    paths = ffn_module_paths(model)
    originals = [model.get_submodule(p) for p in paths]
    weights = [m.weight for m in originals]
    base = logits(model, prompts())
    inject(model)
    layers = [model.get_submodule(p) for p in paths]
    assert all(layer.weight is w for layer, w in zip(layers, weights))
    inject(model)
    assert all(model.get_submodule(p) is layer for p, layer in zip(paths, layers))
    eject(model)
    assert all(model.get_submodule(p) is m for p, m in zip(paths, originals))
    assert torch.equal(logits(model, prompts()), base)
    eject(model)  # ejecting a plain model changes nothing
    assert all(model.get_submodule(p) is m for p, m in zip(paths, originals))


def test_gradients_reach_trainable_documents_and_steps_are_seen():
    """Fused autograd equals differentiating the merged weights W + α A Bᵀ; a step inside one context is seen."""
    model = inject(tiny_model("llama"))
    doc = DocParams.init(model, rank=2, alpha=16.0, b_seed=1)
    with torch.no_grad():
        for a, _ in doc.pairs.values():
            a.normal_(0, 0.02)
    ids = prompts()
    with use_documents(model, [doc]):
        model(ids, labels=ids).loss.backward()
    fused_grads = [t.grad.clone() for t in doc.tensors()]
    assert all(g.abs().sum() > 0 for g in fused_grads)

    params = dict(model.named_parameters())
    merged = {f"{p}.weight": params[f"{p}.weight"] + doc.alpha * a @ b.T for p, (a, b) in doc.pairs.items()}
    for t in doc.tensors():
        t.grad = None
    torch.func.functional_call(model, merged, (ids,), {"labels": ids}).loss.backward()
    for got, want in zip(fused_grads, (t.grad for t in doc.tensors())):
        assert rel(got, want) < 1e-4

    optimizer = torch.optim.SGD(doc.tensors(), lr=1.0)
    with use_documents(model, [doc]):
        before = model(ids, labels=ids).loss
        optimizer.step()
        after = model(ids, labels=ids).loss
    assert after < before


def test_errors():
    model = tiny_model("llama")
    docs = random_doc_params(model, 2)
    with pytest.raises(ValueError, match="not injected"):
        with use_documents(model, docs):
            pass
    inject(model)
    with pytest.raises(ValueError, match="per row"):
        with merged_documents(model, [[docs[0]], [docs[1]]]):
            pass
    docs[1].alpha = 8.0
    with pytest.raises(ValueError, match="different alpha"):
        with use_documents(model, docs):
            pass
    with use_documents(model, docs, scale=4.0):  # an explicit scale overrides the alphas
        pass
    with pytest.raises(ValueError, match="2 per-row document sets for a batch of 3"):
        with use_documents(model, [[docs[0]], [docs[0]]]):
            logits(model, prompts(batch=3))
    with pytest.raises(ValueError, match="not a mix"):
        with use_documents(model, [docs[0], [docs[0]]]):
            pass
    wrong = random_doc_params(inject(tiny_model("llama", hidden=16, intermediate=24)))
    with pytest.raises(ValueError, match="model.layers.0.mlp.gate_proj has A"):
        with use_documents(model, wrong):
            pass


def test_unsupported_architecture_is_named():
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    model = AutoModelForCausalLM.from_config(
        GPTNeoXConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    )
    with pytest.raises(ValueError, match=r"unsupported architecture 'gpt_neox'; supported: llama, .*gpt2"):
        inject(model)


@pytest.mark.slow
def test_embedded_smollm2():
    from prag_core.model.load import load_model

    model, tokenizer = load_model()
    inject(model)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    base = logits(model, ids)
    docs = random_doc_params(model, 1, seed=0, std=0.02)
    with use_documents(model, docs):
        fused = logits(model, ids)
    with merged_documents(model, docs):
        merged = logits(model, ids)
    assert rel(fused, base) > 1e-3
    assert rel(fused, merged) < 1e-5
    assert torch.equal(logits(model, ids), base)

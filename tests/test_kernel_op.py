"""prag::fused_lora_linear as a torch.library custom op: torch.library.opcheck (schema, fake tensor, autograd
registration, AOT dispatch) on both paths, the op as one node of a compiled graph, and torch.compile(fullgraph=True)
of an injected tiny model giving the eager outputs with documents active."""

import pytest
import torch
from test_kernels import TRITON_DEVICE, make_case
from tiny import random_doc_params, tiny_model

from prag_core.model.inject import eject, inject, use_documents
from prag_kernels import fused_lora_linear_cat
from prag_kernels.torch_path import cat_rank, column_mask

OP = torch.ops.prag.fused_lora_linear.default


@pytest.mark.parametrize("backend", ["torch", "triton", "fused", "delta"])
@pytest.mark.parametrize("rows", ["none", "docs", "mask"])
def test_opcheck(backend, rows):
    device = "cpu" if backend == "torch" else TRITON_DEVICE
    case = make_case(61, 4, 20, 18, 3, 2, rows="none" if rows == "none" else "mixed", device=device)
    row_docs = case["row_docs"] if rows == "docs" else None
    row_mask = column_mask(case["row_docs"], 3, 2, torch.float32) * 0.5 if rows == "mask" else None
    grads = {n: case[n].requires_grad_(True) for n in ("x", "bias", "lora_a", "lora_b")}
    args = (
        grads["x"],
        case["weight"],
        grads["bias"],
        grads["lora_a"],
        grads["lora_b"],
        case["scale"],
        row_docs,
        row_mask,
        backend,
    )
    torch.library.opcheck(OP, args)


def test_the_op_is_one_graph_node():
    """fused_lora_linear_cat with autograd, compiled: no graph break, the custom op traced as itself."""
    case = make_case(67, 3, 20, 18, 3, 2)
    x = case["x"].requires_grad_(True)
    a_cat, b_cat = cat_rank(case["lora_a"]), cat_rank(case["lora_b"])
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm

    def f(x):
        return fused_lora_linear_cat(x, case["weight"], case["bias"], a_cat, b_cat, 2.0).sum()

    torch._dynamo.reset()
    y = torch.compile(f, backend=backend, fullgraph=True)(x)
    assert len(graphs) == 1 and "prag.fused_lora_linear" in graphs[0].code
    assert torch.allclose(y, f(x))


@pytest.mark.usefixtures("one_thread")
def test_torch_compile_of_an_injected_model_equals_eager():
    """fullgraph=True through the injection layer, compiled once: it then serves one document set for the batch,
    one set per row, and no documents, each equal to the eager model, without recompiling."""
    model = inject(tiny_model("llama", hidden=32, intermediate=48))
    docs = random_doc_params(model, n=3, seed=1, std=0.1)
    ids = torch.randint(3, 200, (3, 7), generator=torch.Generator().manual_seed(0))
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return torch._inductor.compile(gm, example_inputs)

    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    outputs = []
    with torch.no_grad():
        for sets in (docs[:2], [[docs[0], docs[2]], [], [docs[1]]], []):
            with use_documents(model, sets):
                eager, traced = model(ids).logits, compiled(ids).logits
            assert torch.allclose(traced, eager, atol=1e-5, rtol=1e-5)
            outputs.append(eager)
        assert torch.equal(outputs[2], eject(model)(ids).logits)  # no documents: the plain model
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-3) and not torch.allclose(
        outputs[0], outputs[2], atol=1e-3
    )
    assert len(graphs) == 1 and "prag.injected_linear" in graphs[0].code

"""prag_kernels against the float64 reference: the Triton paths (interpreter without a GPU): the fused one (the
decode kernel for M ≤ 16, one launch or split-K, and the prefill kernel) and the delta one (the vendor GEMM, then
one Triton launch adding the documents' term), the dispatch table, the torch path, the cat fast entry, autograd,
merge/restore and argument checks.

Every case draws fresh random inputs; kernel outputs are poisoned with NaN before the run, so an
element the kernel leaves unwritten fails the test.
"""

import itertools
import zlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from prag_kernels import (
    fused_lora_linear,
    fused_lora_linear_cat,
    fused_lora_linear_triton,
    merge_lora_,
    reference_fused_lora_linear,
    restore_,
)
from prag_kernels.fused_lora_triton import (
    DECODE_CONFIGS,
    PREFILL_CONFIGS,
    _decode_autotuned,
    _decode_configs_for,
    _fused_lora_autotuned,
    _prefill_configs_for,
    cdiv,
    launches,
    m_bucket,
    n_split,
    split_k,
)
from prag_kernels.torch_path import cat_rank, column_mask

ROOT = Path(__file__).resolve().parents[1]
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
# Triton runs on the GPU when there is one, else in its interpreter (whose bf16 tl.dot is broken)
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if TRITON_DEVICE == "cuda" else [])
# several tiles and K steps even at in/out ~40; for M ≤ 16 also split-K into 3 chunks (the last one ragged)
SMALL_BLOCKS = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, SPLIT_K=3, N_SPLIT=2)
PATHS = ["fused", "delta"]


def rel(y, ref):
    y, ref = y.detach().double().cpu(), ref.detach().double().cpu()
    return ((y - ref).norm() / ref.norm()).item()


def make_case(seed, m, k, n, docs, rank, bias=True, dtype=torch.float32, rows="none", slots=3, device="cpu"):  # noqa: PLR0913 (a case is its shape)
    """Random operands sized so the base and the LoRA term are of similar size; rows: none | mixed."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * std).to(dtype)

    x, weight = rnd(m, k), rnd(n, k, std=k**-0.5)
    row_docs = None
    if rows == "mixed":  # ids in [-1, docs), duplicates allowed, and one row with every slot empty
        row_docs = torch.randint(-1, max(docs, 1), (m, slots), generator=g) if docs else torch.full((m, slots), -1)
        row_docs[m // 2] = -1
    case = dict(
        x=x,
        weight=weight,
        bias=rnd(n) if bias else None,
        lora_a=rnd(docs, n, rank, std=(rank * max(docs, 1)) ** -0.5),
        lora_b=rnd(docs, k, rank, std=k**-0.5),
        scale=1.5,
        row_docs=row_docs,
    )
    return {name: v.to(device) if torch.is_tensor(v) else v for name, v in case.items()}


def reference(case):
    args = [case[n] if case[n] is None else case[n].double().cpu() for n in ("x", "weight", "bias", "lora_a", "lora_b")]
    rows = case["row_docs"]
    return reference_fused_lora_linear(*args, case["scale"], None if rows is None else rows.cpu())


def case_launches(case, row_mask, out, **options):
    """launches() for a make_case case with row_mask weights, writing out."""
    operands = (case[n] for n in ("x", "weight", "bias", "lora_a", "lora_b", "scale"))
    return launches(*operands, row_mask, out, **options)


def assert_lora_matters(case, ref):
    """Guard against a vacuous pass: with documents in play the LoRA term moves y well past the tolerance."""
    if case["lora_a"].shape[0] and (case["row_docs"] is None or (case["row_docs"] >= 0).any()):
        base = F.linear(*(t if t is None else t.double().cpu() for t in (case["x"], case["weight"], case["bias"])))
        assert rel(base, ref) > 0.05


# (M, in, out, documents, rank, bias, row selection, dtype, blocks): every M, rank, document count,
# row mode, dtype and bias setting appears several times, in/out never a multiple of the block.
SHAPES = [(1, 33, 47), (3, 47, 33), (17, 33, 47), (130, 40, 35)]
CASES = [
    (m, k, n, docs, rank, bias, rows, dtype, blocks)
    for i, ((m, k, n), (docs, rank), rows, dtype) in enumerate(
        itertools.product(SHAPES, [(0, 2), (1, 1), (3, 2), (3, 5), (4, 16), (1, 16)], ["none", "mixed"], DTYPES)
    )
    if (i % 3 != 1 or m == 1)  # thin the product (interpreter time), keeping every M=1 case
    for bias, blocks in [((i // 2) % 2 == 0, "small" if i % 2 else "auto")]
]


def case_id(c):
    m, k, n, docs, rank, bias, rows, dtype, blocks = c
    return f"M{m}-{k}x{n}-D{docs}r{rank}-{'bias' if bias else 'nobias'}-{rows}-{str(dtype)[6:]}-{blocks}"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("c", CASES, ids=case_id)
def test_triton_kernel_matches_reference(c, path):
    m, k, n, docs, rank, bias, rows, dtype, blocks = c
    seed = zlib.crc32(f"{case_id(c)}-{path}".encode())
    case = make_case(seed, m, k, n, docs, rank, bias, dtype, rows, device=TRITON_DEVICE)
    ref = reference(case)
    assert_lora_matters(case, ref)
    out = torch.full((m, n), float("nan"), dtype=dtype, device=TRITON_DEVICE)
    y = fused_lora_linear_triton(**case, out=out, config=SMALL_BLOCKS if blocks == "small" else None, path=path)
    assert y is out and not y.isnan().any()
    assert rel(y, ref) < TOL[dtype]


@pytest.mark.parametrize("c", CASES, ids=case_id)
def test_torch_path_and_cat_entry_match_reference(c):
    m, k, n, docs, rank, bias, rows, dtype, _ = c
    case = make_case(zlib.crc32(case_id(c).encode()) + 1, m, k, n, docs, rank, bias, dtype, rows)
    ref = reference(case)
    assert_lora_matters(case, ref)
    y = fused_lora_linear(**case, backend="torch")
    assert y.dtype == dtype and rel(y, ref) < TOL[dtype]
    # the fast entry on the same documents: stacked along rank, rows as a column mask
    a_cat, b_cat = cat_rank(case["lora_a"]), cat_rank(case["lora_b"])
    mask = None if rows == "none" else column_mask(case["row_docs"], docs, rank, dtype)
    y_cat = fused_lora_linear_cat(case["x"], case["weight"], case["bias"], a_cat, b_cat, case["scale"], mask)
    assert rel(y_cat, ref) < TOL[dtype]


def test_autotune_configs_cover_every_call():
    """Every M family, operand size and R_PAD up to MAX_RANK keeps gated configs, and the autotuned launches
    (decode, middle and large prefill) pick among them."""
    assert [m_bucket(m) for m in (17, 32, 33, 300, 10**6)] == [32, 32, 64, 512, 4096]
    for x in (torch.empty(1, dtype=torch.float16), torch.empty(1)):
        for r_pad in (16, 32, 64):
            for bucket, family in [(32, {32, 64}), (512, {64, 128})]:
                kept = _prefill_configs_for(PREFILL_CONFIGS, {"M_BUCKET": bucket, "x_ptr": x}, R_PAD=r_pad)
                assert kept and all(c.r_pad_max >= r_pad and c.operand_bytes == x.element_size() for c in kept)
                assert x.element_size() == 4 or {c.kwargs["BLOCK_M"] for c in kept} <= family
            kept = _decode_configs_for(DECODE_CONFIGS, {"K_SPLIT": 3584, "x_ptr": x}, R_PAD=r_pad)
            assert kept and all(c.r_pad_max >= r_pad and c.operand_bytes == x.element_size() for c in kept)
    for m, tuner, family in [
        (2, _decode_autotuned, {None}),
        (200, _fused_lora_autotuned, {32, 64}),
        (300, _fused_lora_autotuned, {64, 128}),
    ]:
        case = make_case(m, m, 33, 47, 3, 2, dtype=torch.float16, rows="mixed", device=TRITON_DEVICE)
        out = torch.full((m, 47), float("nan"), dtype=torch.float16, device=TRITON_DEVICE)
        assert rel(fused_lora_linear_triton(**case, out=out, path="fused"), reference(case)) < 2e-3
        assert tuner.best_config.kwargs.get("BLOCK_M") in family and tuner.best_config.operand_bytes == 2


def test_split_k_fills_the_gpu():
    """(splits, K chunk) on a 132-SM card: the up projection's 224 column tiles need no split, the down
    projection's 64 get 4 K chunks; short K is never split; chunks are multiples of every BLOCK_K."""
    assert split_k(14336, 4096, 132) == (1, 4096)
    assert split_k(4096, 14336, 132) == (4, 3584)
    assert split_k(576, 1536, 132) == (1, 1536)
    assert split_k(4096, 4096 + 16, 132) == (4, 1280)


@pytest.mark.parametrize("m", [4, 20])
def test_kernel_row_mask_float_weights_and_split_k_partials(m):
    """row_mask holds arbitrary float weights per rank column (not only 0/1 counts); M = 4 runs the split-K
    decode (3 chunks, partials poisoned with NaN before the run: every one must be written), M = 20 prefill."""
    case = make_case(53 + m, m, 70, 47, 3, 2, device=TRITON_DEVICE)
    g = torch.Generator().manual_seed(m)
    mask = torch.randn(m // 2, 6, generator=g).to(TRITON_DEVICE)  # one row per 2 consecutive rows of x
    mask[0] = 0.0  # a group without documents
    x, w, b = (case[n].double().cpu() for n in ("x", "weight", "bias"))
    a_cat, b_cat = (cat_rank(case[n]).double().cpu() for n in ("lora_a", "lora_b"))
    ref = x @ w.T + b + case["scale"] * ((x @ b_cat) * mask.double().cpu().repeat_interleave(2, 0)) @ a_cat.T
    out = torch.full((m, 47), float("nan"), device=TRITON_DEVICE)
    plan = case_launches(case, mask, out, config=SMALL_BLOCKS)
    assert len(plan) == (2 if m <= 16 else 1)
    if m <= 16:
        part = plan[0][2][7]
        assert part.shape == (3, m, 47 + 16)
        part.fill_(float("nan"))
    for kernel, grid, args, meta in plan:
        kernel[grid](*args, **meta)
    assert rel(out, ref) < 1e-5


@pytest.mark.parametrize("m", [3, 37])
def test_delta_launch_adds_into_y_at_every_element(m):
    """The delta path's Triton launch on its own: out holds the base linear (the vendor GEMM's part), the launch adds
    scale · ((x B_cat) ⊙ w) A_catᵀ with float row weights (one row per 2 rows of x), over 3 column chunks of 2 tiles
    (the last ragged) and several m-tiles; every element is checked, not a norm over all of them."""
    case = make_case(71 + m, m + 1, 70, 83, 3, 2, device=TRITON_DEVICE)
    case["x"] = case["x"][:m]
    g = torch.Generator().manual_seed(m)
    mask = torch.randn(m // 2 + 1, 6, generator=g)
    mask[0] = 0.0  # a group without documents
    x, w, b = (case[n].double().cpu() for n in ("x", "weight", "bias"))
    a_cat, b_cat = (cat_rank(case[n]).double().cpu() for n in ("lora_a", "lora_b"))
    base = x @ w.T + b
    delta = case["scale"] * ((x @ b_cat) * mask.double().repeat_interleave(2, 0)[:m]) @ a_cat.T
    out = base.float().to(TRITON_DEVICE)
    rows = torch.zeros(m + 1, 6)
    rows[::2], rows[1::2] = mask, mask[: (m + 1) // 2]  # one row of weights per row of x
    plan = case_launches(case, rows[:m].to(TRITON_DEVICE), out, config=dict(SMALL_BLOCKS, N_SPLIT=3), path="delta")
    ((kernel, grid, args, meta),) = plan
    assert grid == (cdiv(m, 16), 3) and args[4] is out
    kernel[grid](*args, **meta)
    err = (out.double().cpu() - (base + delta)).abs()
    assert (err <= 1e-5 * (base + delta).abs().max()).all()
    assert torch.equal(out[:2].cpu(), base[:2].float())  # rows whose weights are all 0 keep the base exactly
    assert (delta[2:].abs().amax(1) > 1e-3).all()


def test_delta_column_chunks_fill_the_gpu():
    """(chunks, N_CHUNK) on a 132-SM card: about two programs per SM, chunks whole tiles, never more chunks
    than tiles: at decode (one m-tile) each of the up projection's 224 tiles is a program, at M = 4096 (64 m-tiles)
    5 chunks of 23 tiles re-read x 5 times."""
    assert n_split(1, 14336, 64, 132) == (224, 64)
    assert n_split(1, 576, 64, 132) == (9, 64)
    assert n_split(64, 14336, 128, 132) == (5, 2944)
    assert n_split(4096, 100, 64, 132) == (1, 128)


@pytest.mark.parametrize("backend", ["torch", *PATHS])
def test_leading_dims_and_per_batch_row_docs(backend):
    """x (B, T, in) with one document set per batch element (B, J) or per token (B·T, J)."""
    dev = "cpu" if backend == "torch" else TRITON_DEVICE
    case = make_case(7, 6, 33, 47, 3, 2, rows="mixed", device=dev)
    x = case.pop("x").view(2, 3, 33)
    per_batch = torch.tensor([[0, 2, -1], [1, 1, -1]], device=dev)
    ref = reference(dict(case, x=x.reshape(6, 33), row_docs=per_batch.repeat_interleave(3, 0)))
    y = fused_lora_linear(x, **dict(case, row_docs=per_batch), backend=backend)
    assert y.shape == (2, 3, 47) and rel(y.reshape(6, 47), ref) < 1e-5
    y = fused_lora_linear(x, **dict(case, row_docs=per_batch.repeat_interleave(3, 0)), backend=backend)
    assert rel(y.reshape(6, 47), ref) < 1e-5
    mask = column_mask(per_batch, 3, 2, torch.float32)
    y = fused_lora_linear_cat(
        x,
        case["weight"],
        case["bias"],
        cat_rank(case["lora_a"]),
        cat_rank(case["lora_b"]),
        case["scale"],
        mask,
        backend=None if backend == "torch" else backend,
    )
    assert rel(y.reshape(6, 47), ref) < 1e-5


@pytest.mark.parametrize("backend", ["torch", *PATHS])
def test_any_strides(backend):
    """Transposed weight (GPT-2 Conv1D), strided x, permuted adapters: nothing needs to be contiguous."""
    case = make_case(11, 5, 33, 47, 3, 2, rows="mixed", device="cpu" if backend == "torch" else TRITON_DEVICE)
    ref = reference(case)
    odd = dict(
        case,
        x=case["x"].T.contiguous().T,
        weight=case["weight"].T.contiguous().T,
        lora_a=case["lora_a"].permute(2, 1, 0).contiguous().permute(2, 1, 0),
        lora_b=case["lora_b"].transpose(0, 1).contiguous().transpose(0, 1),
        row_docs=case["row_docs"].T.contiguous().T,
    )
    assert not any(odd[n].is_contiguous() for n in ("x", "weight", "lora_a", "lora_b", "row_docs"))
    assert rel(fused_lora_linear(**odd, backend=backend), ref) < 1e-5
    x3 = odd["x"].unsqueeze(0)  # (1, 5, 33), non-contiguous, with a leading dim
    y = fused_lora_linear(x3, **{k: v for k, v in odd.items() if k not in ("x", "row_docs")}, backend=backend)
    assert rel(y[0], reference(dict(case, row_docs=None))) < 1e-5


def test_no_documents_is_exactly_linear():
    """Zero documents (or rank 0) is F.linear bit for bit, through both entries, also with leading dims."""
    case = make_case(3, 4, 33, 47, 0, 2)
    x = case.pop("x").view(2, 2, 33)
    base = F.linear(x, case["weight"], case["bias"])
    assert torch.equal(fused_lora_linear(x, **case), base)
    empty_a, empty_b = torch.zeros(47, 0), torch.zeros(33, 0)
    assert torch.equal(fused_lora_linear_cat(x, case["weight"], case["bias"], empty_a, empty_b, 2.0), base)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("m", [9, 20])
def test_rows_without_documents_get_the_base_linear_exactly(m, path):
    """Torch path: such rows equal F.linear bit for bit; Triton (M = 9 decode with split-K, M = 20 prefill):
    they equal the path's own zero-document output."""
    case = make_case(5, m, 33, 47, 3, 2, rows="mixed")
    case["row_docs"][::3] = -1
    empty = (case["row_docs"] < 0).all(1)
    y = fused_lora_linear(**case, backend="torch")
    assert torch.equal(y[empty], F.linear(case["x"], case["weight"], case["bias"])[empty])
    assert not torch.equal(y[~empty], F.linear(case["x"], case["weight"], case["bias"])[~empty])
    case = {n: v.to(TRITON_DEVICE) if torch.is_tensor(v) else v for n, v in case.items()}
    empty = empty.to(TRITON_DEVICE)
    y = fused_lora_linear_triton(**case, config=SMALL_BLOCKS, path=path)
    none = dict(case, lora_a=case["lora_a"][:0], lora_b=case["lora_b"][:0], row_docs=None)
    assert torch.equal(y[empty], fused_lora_linear_triton(**none, config=SMALL_BLOCKS, path=path)[empty])


def test_a_document_listed_twice_counts_twice():
    case = make_case(13, 2, 33, 47, 2, 2)
    twice = fused_lora_linear(**dict(case, row_docs=torch.tensor([[1, 1], [1, -1]])))
    doubled = fused_lora_linear(
        **dict(case, scale=2 * case["scale"], lora_a=case["lora_a"][1:], lora_b=case["lora_b"][1:])
    )
    assert rel(twice[0], doubled[0].double()) < 1e-6
    case = {n: v.to(TRITON_DEVICE) if torch.is_tensor(v) else v for n, v in case.items()}
    case["row_docs"] = torch.tensor([[1, 1], [1, -1]], device=TRITON_DEVICE)
    assert rel(fused_lora_linear_triton(**case), reference(case)) < 1e-5


# --- autograd -------------------------------------------------------------------------------------


def leaves(case, names):
    return {n: case[n].clone().requires_grad_(True) if n in names else case[n] for n in case}


@pytest.mark.parametrize("rows", ["none", "mixed"])
def test_gradcheck_torch_path(rows):
    case = make_case(17, 4, 6, 5, 3, 2, dtype=torch.float64, rows=rows)
    names = ("x", "weight", "bias", "lora_a", "lora_b")

    def f(x, weight, bias, lora_a, lora_b):
        return fused_lora_linear(x, weight, bias, lora_a, lora_b, case["scale"], case["row_docs"], backend="torch")

    assert torch.autograd.gradcheck(f, tuple(case[n].requires_grad_(True) for n in names))


def test_gradcheck_cat_entry_per_batch_mask():
    case = make_case(19, 6, 5, 4, 1, 4, dtype=torch.float64)
    x = case["x"].view(2, 3, 5).requires_grad_(True)
    a_cat, b_cat = (cat_rank(case[n]).clone().requires_grad_(True) for n in ("lora_a", "lora_b"))
    mask = torch.tensor([[1.0, 0.0, 2.0, 1.0], [0.0, 1.0, 1.0, 0.0]], dtype=torch.float64)

    def f(x, a_cat, b_cat):
        return fused_lora_linear_cat(x, case["weight"], case["bias"], a_cat, b_cat, 0.7, mask)

    assert torch.autograd.gradcheck(f, (x, a_cat, b_cat))


@pytest.mark.parametrize("path", PATHS)
def test_triton_grads_match_reference_grads(path):
    """Training through either Triton path: the forward runs it, the backward (autograd.py) is shared."""
    case = make_case(23, 9, 33, 47, 3, 2, rows="mixed", device=TRITON_DEVICE)
    names = ("x", "lora_a", "lora_b")
    as_double = {n: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for n, v in case.items()}
    ours, ref = leaves(case, names), leaves(as_double, names)
    g = torch.randn(9, 47, generator=torch.Generator().manual_seed(0)).to(TRITON_DEVICE)
    fused_lora_linear(**ours, backend=path).backward(g)
    reference_fused_lora_linear(**ref).backward(g.double())
    for n in names:
        assert rel(ours[n].grad, ref[n].grad) < 1e-5, n


def test_a_rows_loss_reaches_only_its_documents():
    case = leaves(make_case(29, 3, 8, 6, 3, 2), ("lora_a", "lora_b"))
    case["row_docs"] = torch.tensor([[0, -1], [2, 2], [-1, -1]])
    y = fused_lora_linear(**case)
    y[0].sum().backward(retain_graph=True)  # row 0 uses document 0 only
    for n in ("lora_a", "lora_b"):
        assert case[n].grad[0].abs().sum() > 0 and not case[n].grad[1:].any()
        case[n].grad = None
    y[2].sum().backward()  # row 2 uses nothing
    assert not case["lora_a"].grad.any() and not case["lora_b"].grad.any()


# --- merge baseline -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_merge_then_restore_is_bit_exact(dtype, tol):
    case = make_case(31, 1, 40, 24, 3, 2, dtype=dtype)
    weight = case["weight"].T.contiguous().T  # a transposed view, like GPT-2's Conv1D weight
    original = weight.clone()
    backup = merge_lora_(weight, case["lora_a"], case["lora_b"], 16.0)
    delta = 16.0 * torch.einsum("dor,dir->oi", case["lora_a"].double(), case["lora_b"].double())
    assert rel(weight, original.double() + delta) < tol and not torch.equal(weight, original)
    restore_(weight, backup)
    assert torch.equal(
        weight.view(torch.int16 if dtype != torch.float32 else torch.int32),
        original.view(torch.int16 if dtype != torch.float32 else torch.int32),
    )


def test_merged_linear_equals_fused():
    case = make_case(37, 5, 33, 47, 3, 2)
    weight = case["weight"].clone()
    backup = merge_lora_(weight, case["lora_a"], case["lora_b"], case["scale"])
    assert rel(F.linear(case["x"], weight, case["bias"]), reference(case)) < 1e-5
    restore_(weight, backup)
    assert torch.equal(weight, case["weight"])


# --- bad arguments --------------------------------------------------------------------------------


def _bad(case, **change):
    return dict(case, **change)


BAD = [
    ("weight", lambda c: _bad(c, weight=c["weight"][:, :-1])),
    ("bias", lambda c: _bad(c, bias=c["bias"][:-1])),
    ("lora_a", lambda c: _bad(c, lora_a=c["lora_a"][:, :-1])),
    ("lora_b", lambda c: _bad(c, lora_b=c["lora_b"][:, :-1])),
    ("rank", lambda c: _bad(c, lora_b=c["lora_b"][:, :, :1])),
    ("documents", lambda c: _bad(c, lora_b=c["lora_b"][:2])),
    ("lora_a", lambda c: _bad(c, lora_a=c["lora_a"].half())),
    ("row_docs", lambda c: _bad(c, row_docs=torch.tensor([[0], [3], [1]]))),
    ("row_docs", lambda c: _bad(c, row_docs=torch.tensor([[0], [-2], [1]]))),
    ("row_docs", lambda c: _bad(c, row_docs=torch.zeros(4, 1, dtype=torch.long))),
    ("row_docs", lambda c: _bad(c, row_docs=torch.zeros(3, 1))),
    ("row_docs", lambda c: _bad(c, row_docs=torch.zeros(3, dtype=torch.long))),
    ("backend", lambda c: _bad(c, backend="cuda")),
]


@pytest.mark.parametrize("name,change", BAD, ids=[f"{i}-{b[0]}" for i, b in enumerate(BAD)])
def test_bad_arguments_name_the_argument(name, change):
    case = make_case(41, 3, 8, 6, 3, 2)
    with pytest.raises(ValueError, match=name):
        fused_lora_linear(**change(case))


BAD_CAT = [
    ("a_cat", lambda c: _bad(c, a_cat=c["a_cat"][:-1])),
    ("b_cat", lambda c: _bad(c, b_cat=c["b_cat"][:, :-1])),
    ("b_cat", lambda c: _bad(c, b_cat=c["b_cat"][:-1])),
    ("weight", lambda c: _bad(c, x=c["x"][:, :-1])),
    ("b_cat", lambda c: _bad(c, b_cat=c["b_cat"].double())),
    ("row_mask", lambda c: _bad(c, row_mask=torch.ones(2, 6))),
    ("row_mask", lambda c: _bad(c, row_mask=torch.ones(3, 5))),
    ("row_mask", lambda c: _bad(c, row_mask=torch.ones(3, 6, dtype=torch.float64))),
]


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("name,change", BAD_CAT, ids=[f"{i}-{b[0]}" for i, b in enumerate(BAD_CAT)])
def test_bad_cat_arguments_name_the_argument(name, change, grad):
    """Both the no-grad hot path (checks run when a GEMM refuses) and the autograd path."""
    case = make_case(43, 3, 8, 6, 3, 2)
    cat = dict(
        x=case["x"].requires_grad_(grad),
        weight=case["weight"],
        bias=case["bias"],
        a_cat=cat_rank(case["lora_a"]),
        b_cat=cat_rank(case["lora_b"]),
        scale=2.0,
    )
    with pytest.raises(ValueError, match=name):
        fused_lora_linear_cat(**change(cat))


def test_bad_launcher_and_merge_arguments():
    case = make_case(47, 3, 8, 6, 5, 16)  # total rank 80 > MAX_RANK 64: more than the gated R_PAD
    with pytest.raises(ValueError, match="lora_b"):
        fused_lora_linear_triton(**case)
    assert rel(fused_lora_linear(**case), reference(case)) < 1e-5  # the torch path has no such limit
    with pytest.raises(ValueError, match="lora_a"):
        merge_lora_(case["weight"].clone(), case["lora_a"][:, 1:], case["lora_b"], 1.0)
    with pytest.raises(ValueError, match="backup"):
        restore_(case["weight"].clone(), case["weight"][1:])

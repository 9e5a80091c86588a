"""The document pool: fixed slots and per-row weights give the answers of use_documents' per-row path, slots are
reused and evicted least-recently-loaded first among unused ones, and nothing is ever reallocated."""

import pytest
import torch
from tiny import random_doc_params, tiny_llama

from prag_core.model.inject import inject, use_documents
from prag_core.model.pool import DocumentPool, PoolFull


@pytest.fixture(scope="module")
def model():
    return inject(tiny_llama(seed=3).double())


@pytest.fixture(scope="module")
def docs(model):
    return [d.to(dtype=torch.float64) for d in random_doc_params(model, 4, seed=7, std=0.2)]


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def ids(batch, seed=0):
    return torch.randint(5, 100, (batch, 9), generator=torch.Generator().manual_seed(seed))


def addresses(pool):
    return [t.data_ptr() for pair in pool.columns.values() for t in pair] + [pool.row_weights.data_ptr()]


def test_pool_rows_equal_the_per_row_path_in_float64(model, docs):
    rows = [([0, 1, 2], [0.5, 0.3, 0.2]), ([1], [1.0]), ([], []), ([2, 2], [0.25, 0.5]), ([3, 0], [2.0, -1.0])]
    batch = ids(len(rows), seed=1)
    pool = DocumentPool(model, rank=2, alpha=16.0, slots=6, max_rows=8)
    before = addresses(pool)
    for row, (which, weights) in enumerate(rows):
        pool.assign(row, [pool.load(f"d{j}", docs[j]) for j in which], weights)
    with pool.activate():
        pooled = logits(model, batch)
    with use_documents(model, [[docs[j] for j in which] for which, _ in rows], weights=[w for _, w in rows]):
        per_row = logits(model, batch)
    assert ((pooled - per_row).norm() / per_row.norm()).item() < 1e-12
    assert torch.equal(pooled[2], logits(model, batch)[2])  # the empty row is exactly the base model
    assert not torch.allclose(pooled[0], logits(model, batch)[0], atol=1e-4)  # the documents matter
    assert addresses(pool) == before


def test_slots_are_reused_and_evicted_least_recently_loaded_first_among_unused(model, docs):
    pool = DocumentPool(model, rank=2, alpha=16.0, slots=2, max_rows=2)
    a, b = pool.load("a", docs[0]), pool.load("b", docs[1])
    assert {a, b} == {0, 1} and pool.load("a", docs[0]) == a  # loaded once: no copy, same slot
    pool.assign(0, [a])
    c = pool.load("c", docs[2])  # b is the only unused slot
    assert c == b and "b" not in pool.slot_of and pool.slot_of["a"] == a
    pool.assign(1, [c])
    with pytest.raises(PoolFull, match="all 2 slots"):
        pool.load("d", docs[3])
    pool.release(1)
    assert pool.load("d", docs[3]) == c  # c is unused again
    batch = ids(2, seed=2)
    pool.assign(1, [pool.load("d", docs[3])], [0.7])
    with pool.activate():
        pooled = logits(model, batch)
    with use_documents(model, [[docs[0]], [docs[3]]], weights=[[1.0], [0.7]]):
        assert ((pooled - logits(model, batch)).norm() / pooled.norm()).item() < 1e-12


def test_release_and_reassign_in_place(model, docs):
    pool = DocumentPool(model, rank=2, alpha=16.0, slots=3, max_rows=1)
    batch = ids(1, seed=3)
    pool.assign(0, [pool.load("a", docs[0])])
    pool.assign(0, [pool.load("b", docs[1])], [0.5])  # replaces a
    with pool.activate():
        reassigned = logits(model, batch)
    with use_documents(model, [docs[1]], weights=[0.5]):
        assert ((reassigned - logits(model, batch)).norm() / reassigned.norm()).item() < 1e-12
    pool.release(0)
    with pool.activate():
        released = logits(model, batch)
    assert torch.equal(released, logits(model, batch))
    assert pool.users == [0, 0, 0]


def test_pool_refuses_what_does_not_fit(model, docs):
    pool = DocumentPool(model, rank=2, alpha=16.0, slots=2, max_rows=1)
    assert DocumentPool(model, rank=2, alpha=16.0).slots == 32  # the kernel's 64 columns at rank 2
    with pytest.raises(ValueError, match="rank 4, the pool 2"):
        pool.load("x", random_doc_params(model, 1, rank=4)[0])
    with pytest.raises(ValueError, match="a batch of 2 rows, the pool has 1"), pool.activate():
        logits(model, ids(2))
    with pytest.raises(ValueError, match="not injected"):
        DocumentPool(tiny_llama(), rank=2, alpha=16.0)

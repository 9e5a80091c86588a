"""Shared test set-up. Triton runs in its CPU interpreter unless a GPU is present;
the variable must be set before triton is first imported."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on one thread: with several threads every small op waits at a thread barrier, which on a
    loaded machine costs milliseconds (measured: tests 20x slower). Use with pytest.mark.usefixtures."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

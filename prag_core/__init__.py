"""prag_core: Parametric RAG on the fused LoRA kernel (prag_kernels).

Subpackages, each importing only those listed before it (and this package's foundation: corpus.py for the corpus
and question formats and the shipped data, files.py for safe JSON/JSONL/safetensors reads and atomic writes,
errors.py, metrics.py, prompts.py):

    model/      loading a causal LM; injecting the fused LoRA linear into its FFN
    pairs/      a document's LoRA pairs, their file format, how documents combine, PEFT export
    retrieval/  BM25, dense and hybrid retrievers
    storage/    the parameter store
    offline/    corpus -> augmentations -> trained pairs in the store (`prag build`)
    answer/     Retrieve-Update-Generate, evaluation, the HTTP server

cli.py (`prag`), demo.py (`prag demo`) and this module's load_model sit on top (tests/test_layers.py).
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_model"]


def __getattr__(name):
    """prag_core.load_model, imported on first use: `import prag_core` (and `prag --help`) must not import torch."""
    if name == "load_model":
        from prag_core.model.load import load_model

        return load_model
    raise AttributeError(f"module 'prag_core' has no attribute {name!r}")

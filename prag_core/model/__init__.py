"""The model: loading a causal LM (load.py) and swapping its FFN projections for the fused LoRA linear (inject.py).

Imports nothing else of prag_core but the package's foundation (corpus, errors, prompts).
"""

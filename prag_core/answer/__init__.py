"""Answering: Retrieve-Update-Generate with its hops (pipeline.py) over a knowledge base (knowledge_base.py: model,
retriever, store, passages, warm-up pair, opened from a work directory in one step), the per-row contract
(requests.py), the modes, serving defaults and AnswerConfig (config.py, torch-free: `prag --help`
reads it), evaluation (evaluate.py), and the OpenAI-compatible server (serve.py) with its
continuous-batching scheduler (batcher.py over running_batch.py).

Imports everything below it but offline/; cli.py and demo.py sit above it.
"""

"""Answering: Retrieve-Update-Generate with its hops (pipeline.py) over a work directory's parts (parts.py), the
per-row contract (requests.py), evaluation (evaluate.py), and the OpenAI-compatible server (serve.py) with its
continuous-batching scheduler (batcher.py over continuous.py).

Imports everything below it but offline/; cli.py and demo.py sit above it.
"""

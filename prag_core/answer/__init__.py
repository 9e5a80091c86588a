"""Answering: Retrieve-Update-Generate (pipeline.py), evaluation and its metrics (evaluate.py, metrics.py), and
the OpenAI-compatible server (serve.py).

Imports everything below it but offline/; cli.py and demo.py sit above it.
"""

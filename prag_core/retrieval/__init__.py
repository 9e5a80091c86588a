"""Finding a question's documents: BM25 (bm25.py), dense embeddings (dense.py), and the work directory's
retriever, bm25, dense or hybrid (retrievers.py). Every retriever answers search(query, k) -> [(id, score)].

Imports model/ below it; nothing above.
"""

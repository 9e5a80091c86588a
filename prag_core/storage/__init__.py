"""What lives on disk: the parameter store.

    store.py     Store: documents' pairs listed in a SQLite catalog; a build writes it, serving reads it
    payloads.py  the payload file formats: a document file, a shard
    verify.py    `prag store verify [--repair]`: every problem of a store; a lost catalog listed anew

Imports pairs/ and retrieval/ below it; nothing above.
"""

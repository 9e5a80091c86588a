"""What lives on disk: the parameter store.

    store.py     Store: documents' pairs listed in a SQLite catalog; a build writes it, serving reads it
    payloads.py  the payload file formats: a document file, a shard
    folder.py    the files of a store's folder, and the rule that the store never reads or deletes outside it
    verify.py    `prag store verify [--repair]`: every problem of a store; a lost catalog listed anew

Imports pairs/ and retrieval/ below it; nothing above.
"""

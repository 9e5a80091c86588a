"""Errors that more than one module raises (here so that build.py and distributed.py need not import each other)."""


class BuildError(ValueError):
    """Build settings that cannot work (unknown augmenter or construction, targets the model lacks); one line."""

"""The names a user picks among for documents' pairs, without importing torch (`prag --help` reads them).

INITS    how a document's B starts (DocParams.init): shared, document, orthogonal
SCHEMES  how a question's documents combine (pairs/combine.py's docstring): sum, mean, score, dyprag
"""

import math

INITS = ("shared", "document", "orthogonal")
SCHEMES = ("sum", "mean", "score", "dyprag")


def check_scheme(scheme, temperature=1.0):
    """ValueError for an unknown scheme or a temperature that is not a positive finite number."""
    if scheme not in SCHEMES:
        raise ValueError(f"combination: unknown {scheme!r}; choose from {', '.join(SCHEMES)}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature: expected a positive number, got {temperature!r}")

"""PragError, the base of every error a user can fix: a bad file, setting, id or path, said in one line that
names the file, line or field. `prag` prints it as `prag: error: <message>` and exits 2; the server answers a 4xx
(docs/design.md, Errors)."""


class PragError(ValueError):
    """A mistake the user can fix, in one line."""


class BuildError(PragError):
    """Build settings that cannot work (unknown augmenter or construction, targets the model lacks); one line."""

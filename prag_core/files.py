"""Reading and writing prag's files safely: JSON and JSONL readers that refuse in one line, atomic writes, safetensors
readers, a stable digest of JSON values.

Every JSON or JSONL file prag reads from a path it is given goes through read_json or read_jsonl: UTF-8 (a
leading byte-order mark is skipped), JSON, nested at most as deep as Python's recursion allows, and text only
(a lone surrogate escape such as "\\ud800", valid JSON but no character, is refused), each refusal one line that
names the file (and line). Writes are atomic: a temporary file in the same folder, then a rename.
"""

import hashlib
import json
import os
import re
import tempfile
from collections import deque
from pathlib import Path

from prag_core.errors import PragError

_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(text) -> bool:
    """Whether `text` holds a lone surrogate (what a JSON escape "\\ud800" or a non-UTF-8 byte in a command-line
    argument becomes): no character, so it cannot be encoded, tokenized or written back."""
    return _SURROGATE.search(text) is not None


def _surrogate_field(value):
    """The field ('text', 'answers[1]', 'a.b') of the first string or key in a JSON value that holds a lone
    surrogate, "" for the value itself, or None when there is none. Iterative: the value may be deeply nested."""
    todo = deque([("", value)])
    while todo:
        path, v = todo.popleft()
        if isinstance(v, str) and lone_surrogate(v):
            return path
        if isinstance(v, dict):
            for key, item in v.items():
                here = f"{path}.{key}" if path else key
                if lone_surrogate(key):
                    return f"{path} (a key)" if path else "(a key)"
                todo.append((here, item))
        elif isinstance(v, list):
            todo.extend((f"{path}[{i}]", item) for i, item in enumerate(v))
    return None


def _parse(text, where, error):
    """The JSON value of `text`, or one `error` line starting with `where`."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        at = f"line {err.lineno}, column {err.colno}" if "\n" in text.rstrip("\n") else f"column {err.colno}"
        raise error(f"{where}: malformed JSON ({err.msg}, {at})") from None
    except RecursionError:
        raise error(f"{where}: JSON nested too deeply to read") from None
    field = _surrogate_field(value)
    if field is not None:
        what = f"field {field!r}" if field else "the value"
        raise error(
            f"{where}: {what} holds a lone surrogate escape (\\ud800-\\udfff, half of no pair: not text); "
            f"fix or remove it"
        )
    return value


def _decode(raw, where, error, first):
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{where}: not valid UTF-8") from None
    return text.removeprefix("\ufeff") if first else text  # a byte-order mark some editors write


def _check_file(path, error, kind):
    if path.is_dir():
        raise error(f"{path}: a directory, not a {kind} file")
    if not path.is_file():
        raise error(f"{path}: no such file")


def read_jsonl(path, error=PragError, spans=None):
    """Yield (line number, JSON value) for every non-blank line of a JSONL file; each problem is one `error`
    line naming the file and line. `spans`, a list, gets each yielded line's (byte offset, byte length)."""
    path = Path(path)
    _check_file(path, error, ".jsonl")
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            line = _decode(raw, where, error, lineno == 1)
            if line.strip():
                if spans is not None:
                    spans.append((offset, len(raw)))
                yield lineno, _parse(line, where, error)
            offset += len(raw)


def read_json(path, error=PragError):
    """The JSON value of a .json file; each problem is one `error` line naming the file."""
    path = Path(path)
    _check_file(path, error, ".json")
    return _parse(_decode(path.read_bytes(), str(path), error, True), str(path), error)


def write_bytes_atomic(path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never a part.

    A temporary file in the same directory is written, flushed to disk, then
    renamed over `path` (os.replace is atomic within one file system).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def read_safetensors(path, error, what: str, framework: str = "pt", names=None) -> tuple[dict, dict]:
    """(metadata, tensors) of the safetensors file at `path` (only `names`, when given). A missing or damaged
    file raises `error` (a PragError class) with one line naming the file and `what` it should be."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such {what} file")
    try:
        with safe_open(str(path), framework=framework) as f:
            keys = [k for k in f.keys() if names is None or k in names]
            return f.metadata() or {}, {k: f.get_tensor(k) for k in keys}
    except Exception as err:  # safetensors raises several types for a damaged file
        raise error(f"{path}: unreadable {what} ({type(err).__name__}: {err})") from None


_NUMPY_DTYPES = {"F64": "<f8", "F32": "<f4", "I64": "<i8", "I32": "<i4", "U8": "u1"}


def mmap_safetensors(path, error, what: str) -> tuple[dict, dict]:
    """(metadata, arrays) of the safetensors file at `path`, each array a read-only numpy memory map of the file
    (nothing is read until used, so an index of any size opens at once). Same errors as read_safetensors."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such {what} file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= size - 8:
                raise ValueError("header size out of range")
            header = json.loads(f.read(n))
        meta = header.pop("__metadata__", None) or {}
        arrays = {}
        for name, info in header.items():
            dtype, shape, (lo, hi) = np.dtype(_NUMPY_DTYPES[info["dtype"]]), tuple(info["shape"]), info["data_offsets"]
            if hi - lo != dtype.itemsize * int(np.prod(shape)) or 8 + n + hi > size:
                raise ValueError(f"tensor {name!r} lies outside the file")
            arrays[name] = (
                np.memmap(path, dtype, "r", offset=8 + n + lo, shape=shape) if hi > lo else np.zeros(shape, dtype)
            )
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise error(f"{path}: unreadable {what} ({type(err).__name__}: {err})") from None
    return meta, arrays


def append_line(path, line: str) -> None:
    """Append one line (ending in a newline) with a single write, then fsync: a crash can tear only the
    file's last line, which readers detect (no trailing newline) and drop."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path, text: str) -> None:
    """write_bytes_atomic for UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_jsonl_atomic(path, rows) -> None:
    """Write an iterable of JSON-serialisable rows, one per line, atomically."""
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def json_digest(value):
    """A short stable digest of a JSON-able value (training tags, augmentation settings)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]

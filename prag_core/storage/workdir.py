"""A work directory W: one knowledge base, and the one place that knows its layout.

    W/config.json         what `prag build` was asked for: model, training tag, augmentation, retriever, ...
    W/corpus.jsonl        the documents (or passages) as built, texts cut to the model's context
    W/index.safetensors   the BM25 index (always built: cheap, and half of hybrid)
    W/dense.safetensors   dense embeddings (retrievers dense and hybrid)
    W/augment.jsonl       the augmentation cache (offline/augment.py)
    W/warmup.safetensors  the warm-up pair (offline/warmup.py), when the build has one
    W/store/              the parameter store (storage/store.py)
    W/demo_results.json   `prag demo`'s results (answer/evaluate.py's results format)
    W/.prag-workdir       the marker: {"format": 1}, written before anything else a build writes
    W/.prag-lock          the writer's lock (fcntl.flock), holding its pid

No other module joins these names; they ask a Workdir. Its refusals are one-line WorkdirErrors.

Work directory rules (nothing a user types destroys their files):
- `prag build` writes into a folder only if it is new, empty, or a prag work directory: it has the marker, or
  (built before the marker) a config.json with a "training" entry. `--workdir ""`, a model folder, a folder
  of other files are refused (check_buildable), and so is an input of the build that is one of W's own files
  (`--corpus W/corpus.jsonl`; check_input compares resolved paths and inodes).
- One writer: a build and `prag store verify --repair` hold an exclusive flock on W/.prag-lock (lock(); the
  kernel drops it when the process dies, so a kill -9 leaves no stale lock); a second writer is refused,
  naming the holder's pid. Readers (`ask`, `eval`, `serve`) take no lock.
- Outputs (`prag eval --out`, `prag export-peft --out`; check_output) are written by atomic rename, never
  inside a work directory, never over an input, a symbolic link, a device or another non-regular file.
"""

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from prag_core.corpus import read_corpus
from prag_core.errors import PragError
from prag_core.files import read_json, write_jsonl_atomic, write_text_atomic
from prag_core.pairs.peft_export import CONFIG_NAME, WEIGHTS_NAME, export_peft
from prag_core.retrieval.bm25 import BM25Index, RetrievalError
from prag_core.retrieval.dense import DenseIndex, embedder_id, load_embedder
from prag_core.retrieval.retrievers import HybridIndex, check_retriever
from prag_core.storage.store import Store, StoreError

try:
    import fcntl
except ImportError:  # not POSIX: no lock
    fcntl = None

MARKER_FORMAT = 1  # of W/.prag-workdir; a newer one is refused
MARKER, LOCK = ".prag-workdir", ".prag-lock"
OWN = (
    "config.json",
    "corpus.jsonl",
    "index.safetensors",
    "dense.safetensors",
    "augment.jsonl",
    "warmup.safetensors",
    "store",
    "demo_results.json",
    MARKER,
    LOCK,
)  # W's own names, the ones the properties below join


class WorkdirError(PragError):
    """A work directory that is missing, not a directory, not built by prag, or being written by another
    process; an input a build would overwrite."""


class OutputError(PragError):
    """An output path that writing would destroy something at: an input, a work directory's file, a link or a
    device."""


@dataclass(frozen=True)
class Workdir:
    root: Path

    def __post_init__(self):
        if isinstance(self.root, str) and not self.root:  # Path("") is ".": a build would write the current folder
            raise WorkdirError("--workdir is empty (an unset shell variable?); name the work directory")
        object.__setattr__(self, "root", self.root.root if isinstance(self.root, Workdir) else Path(self.root))

    def __str__(self):
        return str(self.root)

    config = property(lambda self: self.root / "config.json")
    corpus = property(lambda self: self.root / "corpus.jsonl")
    bm25_index = property(lambda self: self.root / "index.safetensors")
    dense_index = property(lambda self: self.root / "dense.safetensors")
    augmentations = property(lambda self: self.root / "augment.jsonl")
    warmup = property(lambda self: self.root / "warmup.safetensors")
    store_folder = property(lambda self: self.root / "store")
    demo_results = property(lambda self: self.root / "demo_results.json")
    marker = property(lambda self: self.root / MARKER)
    lock_file = property(lambda self: self.root / LOCK)

    def is_workdir(self):
        """Whether prag wrote W: its marker, or (a work directory built before the marker) a config.json with
        a "training" entry."""
        return self.marker.is_file() or self._prag_config()

    def _prag_config(self):
        try:
            config = json.loads(self.config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False
        return isinstance(config, dict) and "training" in config

    def check_buildable(self):
        """WorkdirError unless W does not exist yet, is an empty folder, or is a prag work directory."""
        if self.root.exists() and not self.root.is_dir():
            raise WorkdirError(f"{self.root}: a file, not a work directory; choose another --workdir")
        if not self.root.is_dir():
            return
        if self.marker.exists():
            self._check_marker()
            return
        if self.config.exists():
            if self._prag_config():
                return
            raise WorkdirError(
                f"{self.root}: its config.json was not written by prag (a model folder?), not a work directory; "
                f"build into a new or empty --workdir"
            )
        foreign = sorted(p.name for p in self.root.iterdir() if p.name not in (MARKER, LOCK))
        if foreign:
            raise WorkdirError(
                f"{self.root}: not a prag work directory and not empty (it holds {', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}); build into a new or empty --workdir"
            )

    def _check_marker(self):
        try:
            found = json.loads(self.marker.read_text(encoding="utf-8"))["format"]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
            raise WorkdirError(
                f"{self.marker}: an unreadable work directory marker; if {self.root} is a prag work directory, "
                f"delete the marker and build again"
            ) from None
        if not isinstance(found, int) or found > MARKER_FORMAT:
            raise WorkdirError(f"{self.marker}: format {found!r}, written by a newer prag; upgrade prag")

    def check_input(self, path, flag):
        """WorkdirError when `path` (a file the build reads, given as `flag`) is one of W's own files, which
        the build rewrites (compared resolved, and by inode where both exist)."""
        if path is not None and self.owns(path):
            raise WorkdirError(
                f"{flag} {path}: a file of the work directory {self.root}, which the build rewrites; pass the "
                f"original (or a copy outside {self.root})"
            )

    def owns(self, path):
        """Whether `path` is, or would be, one of W's own files (or inside its store)."""
        path = Path(path)
        try:
            inside = path.resolve().relative_to(self.root.resolve()).parts
        except (ValueError, OSError):
            inside = ()
        if inside and inside[0] in OWN:
            return True
        for name in OWN:
            try:
                if os.path.samefile(path, self.root / name):
                    return True
            except OSError:
                pass
        return False

    def lock(self):
        """W's WriteLock, not yet taken (claim() or WriteLock.acquire() take it); `with` releases it."""
        return WriteLock(self)

    def claim(self, lock):
        """Before a build's first write: create W, take `lock` (WorkdirError if another process holds it),
        check W again under it and write the marker if W lacks one."""
        lock.acquire()
        self.check_buildable()
        if not self.marker.exists():
            write_text_atomic(self.marker, json.dumps({"format": MARKER_FORMAT}) + "\n")

    def check_built(self):
        """WorkdirError unless `prag build` has written W."""
        if self.root.exists() and not self.root.is_dir():
            raise WorkdirError(f"{self.root}: a file, not a work directory")
        if not self.root.is_dir():
            raise WorkdirError(
                f"{self.root}: no such work directory; create it with "
                f"`prag build --corpus corpus.jsonl --workdir {self.root}`"
            )
        if not self.config.is_file():
            raise WorkdirError(f"{self.root}: not a prag work directory (no config.json); run `prag build` into it")

    def read_config(self):
        """W/config.json as a dict; a one-line WorkdirError naming the file, and the field, when it is unreadable
        or a field prag reads has the wrong type."""
        config = read_json(self.config, WorkdirError)
        fix = "run `prag build` again to rewrite it"
        if not isinstance(config, dict):
            raise WorkdirError(f"{self.config}: expected a JSON object, got {type(config).__name__}; {fix}")
        for key, kind in {"model": str, "retriever": str, "embedder": str, "warmup": str, "training": dict}.items():
            if config.get(key) is not None and not isinstance(config[key], kind):
                got = f"{type(config[key]).__name__} {json.dumps(config[key])[:40]}"
                raise WorkdirError(f"{self.config}: field {key!r} must be a {kind.__name__} or null, got {got}; {fix}")
        return config

    def write_config(self, settings):
        write_text_atomic(self.config, json.dumps(settings, indent=1) + "\n")

    def model_path(self, config):
        """The model config.json names (None: the embedded one); a WorkdirError when its folder has moved."""
        model = config.get("model")
        if model and Path(model).is_absolute() and not Path(model).exists():
            raise WorkdirError(
                f"{self.config}: the model folder of its 'model' entry, {model}, does not exist "
                f"(moved?); put the model back or set 'model' to where it is now"
            )
        return model

    def read_corpus(self):
        return read_corpus(self.corpus)

    def write_corpus(self, docs):
        write_jsonl_atomic(
            self.corpus, [{"id": d.id, "text": d.text, **({"title": d.title} if d.title else {})} for d in docs]
        )

    def open_store(self, fingerprint=None, training=None, **options):
        """The parameter store (storage.store.Store: options device, compute_dtype, storage_dtype, shard_size)."""
        return Store(self.store_folder, fingerprint, training, **options)

    def write_indexes(self, docs, retriever, embedder=None, progress=False):
        """Build and save the indexes `retriever` needs; embedder: (model, id) from dense.load_embedder, for dense
        and hybrid. The term counts and embeddings of documents whose text is unchanged are taken from the indexes
        there, so adding documents tokenizes and embeds only the new ones."""
        check_retriever(retriever)
        BM25Index.build(docs, _previous(BM25Index, self.bm25_index), progress).save(self.bm25_index)
        if retriever == "bm25":
            return
        model, ident = embedder
        DenseIndex.build(docs, model, ident, _previous(DenseIndex, self.dense_index), progress).save(self.dense_index)

    def open_retriever(self, retriever, corpus_hash, embedder=None, device="cpu"):
        """The `retriever`, its indexes checked against the corpus (corpus_sha256) and, when given, the embedder
        W was built with (a name or path); one-line RetrievalError otherwise."""
        check_retriever(retriever)
        bm25 = BM25Index.load(self.bm25_index) if retriever != "dense" else None
        dense = None
        if retriever != "bm25":
            if not self.dense_index.is_file():
                raise RetrievalError(
                    f"{self.dense_index}: no dense index; build it with `prag build --retriever {retriever}`"
                )
            dense = DenseIndex.load(self.dense_index, None if embedder is None else embedder_id(embedder))
        for index, path in ((bm25, self.bm25_index), (dense, self.dense_index)):
            if index is not None and index.corpus_sha256 != corpus_hash:
                raise RetrievalError(
                    f"{self.root}: {path.name} was built from another corpus than corpus.jsonl; run `prag build` again"
                )
        if dense is None:
            return bm25
        dense.model, _ = load_embedder(dense.embedder, device)
        return dense if bm25 is None else HybridIndex(bm25, dense)

    def export_peft(self, doc_ids, out_dir, force=False):
        """Documents of W, by id, as one PEFT LoRA adapter folder (pairs.peft_export); StoreError names a missing
        id or store, or an adapter already in `out_dir` (unless force); OutputError an `out_dir` inside a work
        directory, or a link or device where a file of the adapter goes."""
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise StoreError(f"{out}: a file, not a folder for the adapter")
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            check_output(out / name)
        if not force and any((out / name).exists() for name in (CONFIG_NAME, WEIGHTS_NAME)):
            raise StoreError(f"{out}: holds an adapter already; pass --force to overwrite it")
        store = self.open_store()  # its own fingerprint: exporting needs its documents, not the model
        missing = [d for d in doc_ids if d not in store]
        if missing:
            raise StoreError(f"{store.path}: unknown document id(s) {', '.join(map(repr, missing))}")
        return export_peft([store[d] for d in doc_ids], out_dir)


class WriteLock:
    """The one writer of a work directory: an exclusive flock on W/.prag-lock, which holds the writer's pid.
    The kernel releases it when the process ends, however it ends; `with` releases it at the end of the block."""

    def __init__(self, workdir):
        self.workdir, self._fd = workdir, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def acquire(self):
        """Take the lock (creating W), or a WorkdirError naming the pid of the process that holds it."""
        if self._fd is not None:
            return
        root = self.workdir.root
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.workdir.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise WorkdirError(
                f"{root}: another prag process (pid {holder}) is writing it (`prag build` or `prag store verify "
                f"--repair`); wait for it to end, or build into another --workdir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self):
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor of the open file drops the flock
            self._fd = None


def _enclosing_workdir(path):
    """The work directory `path` is in (a folder above it that prag marked, or built before the marker), or
    None."""
    return next((folder for folder in Path(path).resolve().parents if Workdir(folder).is_workdir()), None)


def check_output(path, flag="--out", inputs=()):
    """OutputError unless the file `path` can be written by atomic rename without destroying anything: what is
    there now is a regular file or nothing (not a symbolic link, whose target the user may mean, a device, a
    pipe or a folder); it is no input ((flag, path) pairs); it is not inside a work directory."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # nothing there (a folder under a file fails when written)
        mode = None
    if mode is not None and stat.S_ISLNK(mode):
        raise OutputError(
            f"{flag} {path}: a symbolic link (writing would replace the link, not its target); name the file "
            f"itself or a new path"
        )
    if mode is not None and stat.S_ISDIR(mode):
        raise OutputError(f"{flag} {path}: a directory, not a file")
    if mode is not None and not stat.S_ISREG(mode):
        raise OutputError(f"{flag} {path}: not a regular file (a device, pipe or socket); name a regular file")
    for input_flag, given in inputs:
        if given is not None and _same_file(path, given):
            raise OutputError(f"{flag} {path}: the same file as {input_flag}; name another file to write")
    inside = _enclosing_workdir(path)
    if inside is not None:
        raise OutputError(f"{flag} {path}: inside the work directory {inside}, whose files prag owns; write it outside")


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def _previous(index_class, path):
    """The index at `path`, to reuse its work for unchanged documents; None when there is none or it is damaged
    or of an older format (then everything is indexed again)."""
    if not path.is_file():
        return None
    try:
        return index_class.load(path)
    except RetrievalError:
        return None

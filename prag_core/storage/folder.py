"""A store's folder (store.py): which files in it are payloads, and the rule that the store never leaves it.

Every path the store reads, writes or deletes is inside its folder, whose real path is resolved once when the
store is opened (the folder may be reached through symbolic links; none inside it is ever followed):
    check_links     shards/ and the catalog's files must not be symbolic links: opening a store, writing a
                    shard, closing a build and `prag store verify` refuse one in one line (StoreError);
    payload_files   lists regular files only: a symbolic link is left out, and so is a shards/ that is one,
                    so close() never deletes through a link and a catalog rebuilt by verify never lists one;
    located         a catalog row's file must be a relative path that stays inside the folder through no
                    symbolic link; else reading it is a StoreError naming the row, nothing is opened, and
                    `prag store verify` reports it (--repair drops the row, the file it named is left alone).
"""

import os
from pathlib import PurePosixPath

from prag_core.errors import PragError

CATALOG = "catalog.sqlite"
PRE_RELEASE = ("manifest.json", "index.safetensors", "journal.jsonl")  # what pre-release stores held instead
NEVER_LINKS = ("shards", CATALOG, f"{CATALOG}-wal", f"{CATALOG}-shm")


class StoreError(PragError):
    """A store that cannot be used as asked (another model's, dtype or layout; an unreadable catalog; a
    pre-release store; a file outside its folder); one line."""


def check_links(folder):
    """A StoreError if shards/ or a catalog file in `folder` is a symbolic link (the store would read, write
    and delete through it, outside its folder)."""
    for name in NEVER_LINKS:
        path = folder / name
        if path.is_symlink():
            raise StoreError(
                f"{path}: a symbolic link (to {os.readlink(path)}); a store never follows links out of its "
                f"folder: put the real {'folder' if name == 'shards' else 'file'} there"
            )


def outside(root, file):
    """Why a catalog row's `file` is not a payload inside the store whose folder's real path is `root`
    (None: it is one). Only the path is looked at (lstat of its parts), never the file's contents."""
    if not isinstance(file, str) or "\0" in file or not PurePosixPath(file).parts:
        return "not a relative path"
    rel = PurePosixPath(file)
    if rel.is_absolute():
        return "an absolute path, outside the store"
    if ".." in rel.parts:
        return "a path out of the store ('..')"
    path = root
    for part in rel.parts:  # `root` is a real path: a link below it is the only way out
        path = os.path.join(path, part)
        if os.path.islink(path):
            return f"reached through a symbolic link (to {os.path.realpath(path)})"
    return None


def located(folder, root, file, doc_id=None):
    """`folder / file` where the catalog's `file` names a payload inside the store (`root`: the folder's real
    path); else a StoreError naming the row (document `doc_id`, or every row of `file`)."""
    why = outside(root, file)
    if why:
        row = f"document {doc_id!r}: its file" if doc_id is not None else "file"
        raise StoreError(f"{folder / CATALOG}: {row} {file!r} is {why}; not read (a store reads only its own files)")
    return folder / file


def payload_files(folder, temporary=False):
    """The payload files in `folder` (with `temporary`, also the temp files of killed writes): regular files,
    never a symbolic link nor a file in a shards/ that is one."""
    shards = folder / "shards"
    shards = shards if shards.is_dir() and not shards.is_symlink() else None
    files = [*folder.glob("*-*.safetensors"), *(shards.glob("*.safetensors") if shards else ())]
    if temporary:
        files += [*folder.glob(".*.safetensors.*.tmp"), *(shards.glob(".*.tmp") if shards else ())]
    return sorted(p for p in files if not p.is_symlink() and p.is_file())


def refuse_pre_release(folder):
    """A StoreError if `folder` holds a store a pre-release prag wrote: one of its files, and no catalog.
    Nothing in it is read or changed."""
    if (folder / CATALOG).exists():
        return
    for name in PRE_RELEASE:
        if (folder / name).is_file():
            raise StoreError(
                f"{folder}: a store from a pre-release prag ({name}); rebuild it: delete {folder} "
                f"and run `prag build` again"
            )

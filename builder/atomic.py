"""Atomic file writes: the one way the project writes a file that someone may read while it is written.

The content goes to a hidden temporary file beside the target, is flushed to disk (``fsync``) and renamed
into place (``os.replace``), so a reader, a crash or a kill never sees half a file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable


TMP_PREFIX = ".tmp-"


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any], *, tag: str = "") -> Path:
    """Write ``path`` through ``write(tmp_path)`` (which creates the temporary file's content), atomically.

    The temporary file is ``.tmp-<tag>-…`` beside ``path``: a writer that holds the lock for ``tag`` may remove
    the ones a killed writer left behind (:func:`remove_orphans`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{tag}-" if tag else TMP_PREFIX, suffix=path.suffix,
                               dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _file_mode())  # mkstemp makes 0600; the result should follow the umask like any file
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def temp_dir_beside(target: str | os.PathLike, what: str) -> Path:
    """A new hidden folder beside ``target`` (same file system, so :func:`replace_dir` can rename it), with the
    permissions of any new folder (mkdtemp makes 0700)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.lpt-{what}-", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def replace_dir(new: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Put the finished folder ``new`` in place of ``target`` (on the same file system) with renames: ``target``
    never holds half of each, and the old folder is removed only once the new one is in place."""
    new, target = Path(new), Path(target)
    if not target.exists():
        os.replace(new, target)
        return target
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, old / target.name)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def remove_orphans(folder: str | os.PathLike, tag: str) -> int:
    """Remove the temporary files of tag ``tag`` in ``folder`` that a killed writer left; returns how many.
    Only call it while holding the lock that every writer of that tag holds."""
    n = 0
    for p in Path(folder).glob(f"{TMP_PREFIX}{tag}-*"):
        p.unlink(missing_ok=True)
        n += 1
    return n


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _file_mode() -> int:
    return 0o666 & ~_umask()


def write_text(path: str | os.PathLike, text: str, *, tag: str = "") -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), tag=tag)


def write_json(path: str | os.PathLike, data: Any, **dumps: Any) -> Path:
    """Write ``data`` as indented JSON (UTF-8, a final newline) to ``path`` atomically."""
    options = {"indent": 2, "ensure_ascii": False, **dumps}
    return write_text(path, json.dumps(data, **options) + "\n")


__all__ = ["TMP_PREFIX", "atomic_write", "remove_orphans", "replace_dir", "temp_dir_beside", "write_json", "write_text"]

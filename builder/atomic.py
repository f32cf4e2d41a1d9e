"""Atomic file writes: the one way the project writes a file that someone may read while it is written.

The content goes to a hidden temporary file beside the target, is flushed to disk (``fsync``) and renamed
into place (``os.replace``), so a reader, a crash or a kill never sees half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Write ``path`` through ``write(tmp_path)`` (which creates the temporary file's content), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
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


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, data: Any, **dumps: Any) -> Path:
    """Write ``data`` as indented JSON (UTF-8, a final newline) to ``path`` atomically."""
    options = {"indent": 2, "ensure_ascii": False, **dumps}
    return write_text(path, json.dumps(data, **options) + "\n")


__all__ = ["atomic_write", "write_json", "write_text"]

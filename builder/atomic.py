"""Atomic file writes: the one way the project writes a file that someone may read while it is written.

The content goes to a hidden temporary file beside the target, is flushed to disk (``fsync``) and renamed
into place (``os.replace``), so a reader, a crash or a kill never sees half a file.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import shlex
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator


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


class Busy(OSError):
    """A lock held by another command; the message names the holder (pid, host, command)."""


_HELD: dict[str, tuple[Any, bool]] = {}  # lock file -> (open file, shared): this process's locks (re-entrant)


def lock_path(target: str | os.PathLike) -> Path:
    """The lock file of ``target`` (a run or an export folder): beside it, so that it outlives a swap of the
    folder (``.<name>.lpt-lock``)."""
    target = Path(os.path.abspath(target))
    return target.parent / f".{target.name}.lpt-lock"


def holder_line(command: str | None = None) -> str:
    """Who holds a lock: pid, host, command and since when."""
    cmd = command or " ".join([Path(sys.argv[0]).name, *map(shlex.quote, sys.argv[1:])])
    return f"pid {os.getpid()} on {socket.gethostname()} ({cmd[:160]}) since {_now()}"


@contextlib.contextmanager
def hold(target: str | os.PathLike, *, shared: bool = False, what: str = "written") -> Iterator[Path]:
    """Hold ``target``'s lock (an OS file lock beside it: a killed holder releases it): ``shared`` by the writers
    that add to it side by side, exclusive by whatever replaces or rewrites it. Never waits: a lock held in the
    other mode is a :class:`Busy` naming its holder(s). Re-entrant in one process (a shared request inside an
    exclusive hold is served by it). On taking the lock, the leftovers of a killed holder beside ``target`` go
    (:func:`remove_leftovers`)."""
    path = lock_path(target)
    key = str(path)
    if key in _HELD and (shared or not _HELD[key][1]):
        yield path
        return
    if key in _HELD:
        raise Busy(f"{target}: held shared by this process; cannot take it exclusively")
    path.parent.mkdir(parents=True, exist_ok=True)
    f = _open_locked(path, target, shared, what)
    try:
        _HELD[key] = (f, shared)
        remove_leftovers(target)
        yield path
    finally:
        _HELD.pop(key, None)
        _release(f, path)


def _open_locked(path: Path, target: Any, shared: bool, what: str) -> Any:
    """The lock file, locked; retried when its last holder removed it meanwhile (the file locked must be the
    one the path names)."""
    while True:
        f = open(path, "a+", encoding="utf-8")
        try:
            _take(f, target, shared, what, lambda: _same_file(f, path))
            if _same_file(f, path):
                return f
        except BaseException:
            f.close()
            raise
        f.close()


def _same_file(f: Any, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
    except FileNotFoundError:
        return False


def _release(f: Any, path: Path) -> None:
    """Release the lock; the last holder removes the lock file (nothing is left beside the target)."""
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path.unlink(missing_ok=True)
    except BlockingIOError:
        pass  # other holders share it: the last of them removes it
    finally:
        f.close()


def _take(f: Any, target: Any, shared: bool, what: str, current: Callable[[], bool]) -> None:
    """Lock ``f``; the holder line is the file's content (an exclusive holder's alone; shared ones add theirs).
    A file its last holder removed meanwhile (``current()`` false) is not a refusal: the caller opens it anew."""
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.seek(0)
        f.truncate()
        f.write(holder_line() + "\n")
        f.flush()
        if shared:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a downgrade: others may join now
        return
    except BlockingIOError:
        pass
    try:
        if not shared:
            raise BlockingIOError
        fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        if not current():
            return
        raise Busy(f"{target} is being {what} by {_holders(f)}; wait for it to finish") from None
    f.seek(0, os.SEEK_END)
    f.write(holder_line() + "\n")
    f.flush()


def _holders(f: Any) -> str:
    """The holder lines of a lock file held by others. A holder writes its line just after it takes the lock, so
    an empty file is read again for a moment before it is called "another process"."""
    for _ in range(100):
        f.seek(0)
        lines = [line.strip() for line in f.read().splitlines() if line.strip()]
        if lines:
            return "; ".join(lines)
        time.sleep(0.01)
    return "another process"


def remove_leftovers(target: str | os.PathLike) -> int:
    """Remove the hidden temporary folders a killed command left beside ``target`` (``.<name>.lpt-<what>-*``,
    ``.<name>.old-*``); only call it while holding ``target``'s lock. Returns how many went."""
    target = Path(os.path.abspath(target))
    n = 0
    for pattern in (f".{target.name}.lpt-*-*", f".{target.name}.old-*"):
        for p in target.parent.glob(pattern):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
                n += 1
    return n


def foreign_entries(folder: str | os.PathLike, ours: Callable[[str], bool]) -> list[str]:
    """What ``folder`` holds that this project did not write, as paths relative to it (sorted): every file for
    which ``ours(relative path)`` is false, every link (to a file or a folder), every empty folder. A folder
    with anything in it is judged by its content."""
    folder = Path(folder)
    out = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        base = Path(root)
        for name in [*files, *dirs]:
            p = base / name
            rel = str(p.relative_to(folder))
            if p.is_symlink() or (name in files and not ours(rel)):
                out.append(rel)
            elif name in dirs and not any(p.iterdir()):
                out.append(rel + "/")
        dirs[:] = [d for d in dirs if not (base / d).is_symlink()]
    return sorted(out)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


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


__all__ = ["TMP_PREFIX", "Busy", "atomic_write", "foreign_entries", "hold", "lock_path", "remove_leftovers", "remove_orphans", "replace_dir", "temp_dir_beside", "write_json", "write_text"]

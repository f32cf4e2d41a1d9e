"""A request cache for inference engines: the same request never goes to a server twice.

Keys are :func:`request_key` hashes (sha256 of a canonical JSON form of the *whole* request: model,
server address, messages with images reduced to the hash of their bytes, every sampling setting and the
continue flag), so any change in the request is a miss. Values are the request's samples as plain JSON
(``[{"text": ..., "finish_reason": ..., "num_tokens": ...}, ...]``); nothing is ever pickled.

Two backends, picked by the file's suffix in :func:`open_cache`:

* ``*.sqlite`` / ``*.sqlite3`` / ``*.db`` -- :class:`SQLiteCache` (stdlib ``sqlite3`` in WAL mode, one
  commit per entry): safe for several threads and several processes sharing one file.
* ``*.json`` / ``*.jsonl`` -- :class:`JSONLinesCache`: append-only JSON lines, one entry a line, the last
  line for a key wins. Easy to read and to ``grep``; meant for one process at a time.

Entries are written as soon as a response arrives, so a crash loses nothing already received (a
half-written last JSON line, the mark of such a crash, is skipped on the next open).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import warnings
from pathlib import Path
from typing import Any, Protocol

SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db")
JSON_SUFFIXES = (".json", ".jsonl")


def request_key(request: dict[str, Any]) -> str:
    """sha256 (hex) of a canonical JSON form of ``request`` (sorted keys, no whitespace).

    ``request`` must already be JSON-able: replace images by the hash of their bytes first.
    """
    text = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class RequestCache(Protocol):
    """What an engine needs from a cache."""

    path: Path

    def get(self, key: str) -> list[dict[str, Any]] | None: ...

    def put(self, key: str, samples: list[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


class SQLiteCache:
    """Cache in one SQLite file (WAL journal, a busy timeout, one commit per ``put``)."""

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 60.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=timeout, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS samples (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    def get(self, key: str) -> list[dict[str, Any]] | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM samples WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.path}: cache entry {key!r} is not valid JSON ({e})") from e

    def put(self, key: str, samples: list[dict[str, Any]]) -> None:
        value = json.dumps(samples, ensure_ascii=False)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO samples (key, value) VALUES (?, ?)", (key, value))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class JSONLinesCache:
    """Append-only JSON-lines cache: ``{"key": ..., "samples": [...]}`` per line; the last line wins.

    The whole file is read once when opened; entries written later by *other* processes are not seen.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._entries: dict[str, list[dict[str, Any]]] = {}
        if self.path.exists():
            self._load()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open until close()

    def _load(self) -> None:
        with open(self.path, encoding="utf-8") as f:
            text = f.read()
        # Every put ends its line with "\n": a last line without one was cut short by a crash.
        complete = text.endswith("\n") or not text
        lines = text.split("\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key, samples = row["key"], row["samples"]
                if not isinstance(key, str) or not isinstance(samples, list):
                    raise TypeError("'key' must be a string and 'samples' a list")
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                if i == len(lines) - 1 and not complete:
                    warnings.warn(f"{self.path}:{i + 1}: dropping a truncated last cache line", stacklevel=3)
                    with open(self.path, "r+b") as f:  # cut it off, so that the next entry starts clean
                        f.truncate(len("\n".join(lines[:-1]).encode("utf-8")) + (1 if i else 0))
                    return
                what = f"missing field {e.args[0]!r}" if isinstance(e, KeyError) else str(e)
                raise ValueError(f"{self.path}:{i + 1}: bad cache line ({what})") from e
            self._entries[key] = samples
        if not complete:  # the last line was whole but lacks its newline
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("\n")  # the next entry starts on a line of its own

    def get(self, key: str) -> list[dict[str, Any]] | None:
        with self._lock:
            return self._entries.get(key)

    def put(self, key: str, samples: list[dict[str, Any]]) -> None:
        line = json.dumps({"key": key, "samples": samples}, ensure_ascii=False) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()
            self._entries[key] = samples

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        with self._lock:
            self._file.close()


def open_cache(spec: str | os.PathLike[str] | RequestCache | None) -> RequestCache | None:
    """A cache from a path (backend chosen by suffix), an existing cache object, or ``None`` (no cache)."""
    if spec is None or hasattr(spec, "get") and hasattr(spec, "put"):
        return spec  # type: ignore[return-value]
    path = Path(spec)  # type: ignore[arg-type]
    suffix = path.suffix.lower()
    if suffix in SQLITE_SUFFIXES:
        return SQLiteCache(path)
    if suffix in JSON_SUFFIXES:
        return JSONLinesCache(path)
    raise ValueError(
        f"cache {str(path)!r}: unknown suffix {suffix!r}; use one of {SQLITE_SUFFIXES} (SQLite) "
        f"or {JSON_SUFFIXES} (JSON lines)"
    )


__all__ = ["JSONLinesCache", "RequestCache", "SQLiteCache", "open_cache", "request_key"]

"""Ids as 64-bit hashes: what the indexes and the reader rule keep instead of the ids' text at scale.

Equal ids have equal hashes; two distinct ids of one run share a hash with probability about n²/2⁶⁵ (n ids:
~3·10⁻⁶ at 10M). Where a shared hash would raise an error, the ids are compared in full first.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def id_hash(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit FNV-1a hash of each id (a null as the empty id), computed on the Arrow buffers, ids of one length
    together: the index keeps these instead of the ids' text."""
    ids = pc.cast(pc.fill_null(ids, ""), pa.large_string())
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    out = np.full(len(ids), 0xCBF29CE484222325, np.uint64)
    if not len(ids):
        return out
    offsets = np.frombuffer(ids.buffers()[1], np.int64)[ids.offset: ids.offset + len(ids) + 1]
    data = np.frombuffer(ids.buffers()[2], np.uint8) if ids.buffers()[2] is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    if (lengths == lengths[0]).all():  # ids of one length (content hashes): the bytes as a matrix, no copy
        _fnv(out, data[offsets[0]:offsets[-1]].reshape(len(ids), int(lengths[0])), slice(None))
        return out
    for n in np.unique(lengths):
        rows = np.flatnonzero(lengths == n)
        for k in range(0, len(rows), 8192):  # a bounded index matrix at a time
            part = rows[k:k + 8192]
            _fnv(out, data[offsets[part][:, None] + np.arange(n)], part)
    return out


def _fnv(out: np.ndarray, chars: np.ndarray, rows: Any) -> None:
    h = out[rows]
    prime = np.uint64(0x100000001B3)
    with np.errstate(over="ignore"):
        for k in range(chars.shape[1]):
            h = (h ^ chars[:, k].astype(np.uint64)) * prime
    out[rows] = h


def among(values: np.ndarray, sorted_hashes: np.ndarray) -> np.ndarray:
    """Whether each hash in ``values`` is in ``sorted_hashes`` (ascending, as :func:`numpy.unique` gives)."""
    if not len(sorted_hashes):
        return np.zeros(len(values), bool)
    at = np.minimum(np.searchsorted(sorted_hashes, values), len(sorted_hashes) - 1)
    return sorted_hashes[at] == values


def find(values: np.ndarray, within: np.ndarray, step: int = 1 << 20, order: np.ndarray | None = None) -> np.ndarray:
    """The place of each hash of ``values`` in ``within`` (``-1`` where absent; the first place, if ``within``
    repeats it), ``step`` values at a time (``order``: ``within``'s stable argsort, when already made). A sort
    and a binary search: a tenth of the memory of Arrow's hash table (``index_in``) at millions of hashes."""
    out = np.full(len(values), -1, np.int32 if len(within) < 2 ** 31 else np.int64)
    if not len(within):
        return out
    order = np.argsort(within, kind="stable") if order is None else order
    for k in range(0, len(values), step):
        v = values[k:k + step]
        found = order[np.minimum(np.searchsorted(within, v, sorter=order), len(within) - 1)]
        out[k:k + step] = np.where(within[found] == v, found, -1)
    return out


__all__ = ["among", "find", "id_hash"]

"""Write a config's rows straight to Hub-layout parquet files, as ``datasets.Dataset.to_parquet`` writes them.

``FOLDER/train-00000-of-0000N.parquet``: the schema is the features' ``arrow_schema`` (its ``huggingface``
metadata lets ``datasets.load_dataset("parquet", ...)`` and ``load_dataset(OUT, config)`` restore the
features), with the per-column compression and dictionary options and page index that ``datasets`` uses
(its content-defined chunking on request: ``cdc=True``). Record batches go to the writer as they come,
about :data:`ROW_GROUP_BYTES` a row group, a new file past :data:`SHARD_BYTES`; no ``datasets`` cache (no
Arrow copy of the set) is made.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

SHARD_BYTES = 500 * 1024 * 1024  # uncompressed Arrow bytes per file (as lpt export shards)
ROW_GROUP_BYTES = 100 * 1000 * 1000  # datasets' MAX_ROW_GROUP_SIZE "100MB"
CDC = False  # content-defined chunking, as datasets writes by default: off here (see write_parquet)


def write_parquet(data: pa.Table | pa.RecordBatch | Iterable[pa.RecordBatch], folder: str | os.PathLike,
                  features: Any, *, shard_bytes: int = SHARD_BYTES, row_group_bytes: int = ROW_GROUP_BYTES,
                  cdc: bool = CDC) -> int:
    """Write ``data`` (a table, or record batches in order) to ``folder/train-0000i-of-0000N.parquet``.

    ``features`` is the config's ``datasets.Features``; every batch is cast to its Arrow schema. Files of an
    earlier write are replaced once the new ones are complete. ``cdc=True`` adds the content-defined chunking
    ``datasets`` uses (smaller re-uploads of a changed set on the Hub, at a cost in encoding). Row
    groups are encoded on a second thread while the next one is assembled. Returns the rows written.
    """
    schema = features.arrow_schema
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shards = _Shards(folder, schema, _writer_options(features, schema, cdc), shard_bytes, cdc)
    rows = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet-writer") as pool:
        in_flight: Future | None = None
        try:
            for table, nbytes in _row_groups(data, schema, row_group_bytes):
                if in_flight is not None:
                    in_flight.result()  # at most one row group encoding while the next is assembled
                in_flight = pool.submit(shards.write, table, nbytes)
                rows += table.num_rows
            if in_flight is not None:
                in_flight.result()
            if not rows:
                shards.write(None, 0)  # no row at all: one file with the schema
            shards.close()
        except BaseException:
            if in_flight is not None:
                in_flight.exception()  # wait for it; its own error, if any, is second to this one
            shards.abort()
            raise
    shards.publish()
    return rows


def _row_groups(data: pa.Table | pa.RecordBatch | Iterable[pa.RecordBatch], schema: pa.Schema,
                row_group_bytes: int) -> Iterator[tuple[pa.Table, int]]:
    """``(table, its Arrow bytes)``: the non-empty batches of ``data`` cast to ``schema`` and gathered into
    tables of about ``row_group_bytes`` (the last one smaller), in order."""
    plain = schema.remove_metadata()
    if isinstance(data, pa.Table):
        data = data.to_batches()
    elif isinstance(data, pa.RecordBatch):
        data = [data]
    pending: list[pa.RecordBatch] = []
    pending_bytes = 0
    for batch in data:
        if batch.num_rows == 0:
            continue
        if batch.schema != plain:
            batch = pa.Table.from_batches([batch]).select(plain.names).cast(plain).combine_chunks().to_batches()[0]
        pending.append(batch)
        pending_bytes += batch.nbytes
        if pending_bytes >= row_group_bytes:
            yield pa.Table.from_batches(pending, schema=plain).replace_schema_metadata(schema.metadata), pending_bytes
            pending, pending_bytes = [], 0
    if pending:
        yield pa.Table.from_batches(pending, schema=plain).replace_schema_metadata(schema.metadata), pending_bytes


class _Shards:
    """The files of one write: row groups go to a temporary file, a new one past ``shard_bytes``; the files
    replace the folder's old ``train-*.parquet`` only once all are written (:meth:`publish`)."""

    def __init__(self, folder: Path, schema: pa.Schema, options: dict[str, Any], shard_bytes: int,
                 cdc: bool) -> None:
        self.folder, self.schema, self.options, self.shard_bytes, self.cdc = folder, schema, options, shard_bytes, cdc
        self.temps: list[Path] = []
        self.writer: pq.ParquetWriter | None = None
        self.bytes = 0

    def write(self, table: pa.Table | None, nbytes: int) -> None:
        """One row group (``None``: only open a file); on the writer thread, one call at a time."""
        if self.writer is None:
            self.temps.append(self.folder / f".tmp-train-{len(self.temps):05d}.parquet")
            self.writer = pq.ParquetWriter(self.temps[-1], schema=self.schema, **self.options)
        if table is None:
            return
        self.writer.write_table(table, row_group_size=table.num_rows)
        self.bytes += nbytes
        if self.bytes >= self.shard_bytes:
            self.close()

    def close(self) -> None:
        """Finish the open file, if any."""
        if self.writer is not None:
            _close(self.writer, self.cdc)
            self.writer, self.bytes = None, 0

    def abort(self) -> None:
        """Close the open file and remove this write's temporary files."""
        if self.writer is not None:
            self.writer.close()
        for t in self.temps:
            t.unlink(missing_ok=True)

    def publish(self) -> None:
        """Replace the folder's old files with this write's, ``train-0000i-of-0000N.parquet``."""
        for old in self.folder.glob("train-*.parquet"):
            old.unlink()
        for i, t in enumerate(self.temps):
            os.replace(t, self.folder / f"train-{i:05d}-of-{len(self.temps):05d}.parquet")


def _cdc_options() -> dict[str, Any]:
    from datasets import config

    return dict(config.DEFAULT_CDC_OPTIONS)


def _writer_options(features: Any, schema: pa.Schema, cdc: bool) -> dict[str, Any]:
    """The ``pq.ParquetWriter`` options ``Dataset.to_parquet`` uses (its own helper when it has one)."""
    try:
        from datasets.arrow_writer import get_parquet_column_options

        columns = get_parquet_column_options(features, schema)
    except ImportError:  # an older datasets: its defaults
        columns = {"compression": "snappy", "use_dictionary": True}
    return {**columns, "write_page_index": True, "use_content_defined_chunking": _cdc_options() if cdc else False}


def _close(writer: pq.ParquetWriter, cdc: bool) -> None:
    if cdc:  # as datasets records it
        writer.add_key_value_metadata({"content_defined_chunking": json.dumps(_cdc_options())})
    writer.close()


__all__ = ["CDC", "ROW_GROUP_BYTES", "SHARD_BYTES", "write_parquet"]

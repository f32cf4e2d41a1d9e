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
from typing import Any, Iterable

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
    ``datasets`` uses (smaller re-uploads of a changed set on the Hub; about twice the encoding time). Row
    groups are encoded on a second thread while the next one is assembled. Returns the rows written.
    """
    schema = features.arrow_schema
    plain = schema.remove_metadata()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    options = _writer_options(features, schema, cdc)
    if isinstance(data, pa.Table):
        data = data.to_batches()
    elif isinstance(data, pa.RecordBatch):
        data = [data]

    temps: list[Path] = []
    state: dict[str, Any] = {"writer": None, "bytes": 0}

    def write(table: pa.Table | None, nbytes: int) -> None:  # on the writer thread, one call at a time
        if state["writer"] is None:
            temps.append(folder / f".tmp-train-{len(temps):05d}.parquet")
            state["writer"] = pq.ParquetWriter(temps[-1], schema=schema, **options)
        if table is None:
            return
        state["writer"].write_table(table, row_group_size=table.num_rows)
        state["bytes"] += nbytes
        if state["bytes"] >= shard_bytes:
            _close(state["writer"], cdc)
            state["writer"], state["bytes"] = None, 0

    pending: list[pa.RecordBatch] = []
    pending_bytes = rows = 0
    in_flight: Future | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet-writer") as pool:

        def submit(table: pa.Table | None, nbytes: int) -> None:
            nonlocal in_flight
            if in_flight is not None:
                in_flight.result()  # at most one row group encoding while the next is assembled
            in_flight = pool.submit(write, table, nbytes)

        try:
            for batch in data:
                if batch.num_rows == 0:
                    continue
                if batch.schema != plain:
                    batch = pa.Table.from_batches([batch]).select(plain.names).cast(plain).combine_chunks() \
                        .to_batches()[0]
                pending.append(batch)
                pending_bytes += batch.nbytes
                rows += batch.num_rows
                if pending_bytes >= row_group_bytes:
                    submit(pa.Table.from_batches(pending, schema=plain).replace_schema_metadata(schema.metadata),
                           pending_bytes)
                    pending, pending_bytes = [], 0
            if pending:
                submit(pa.Table.from_batches(pending, schema=plain).replace_schema_metadata(schema.metadata),
                       pending_bytes)
            elif not rows:
                submit(None, 0)  # no row at all: one file with the schema
            if in_flight is not None:
                in_flight.result()
            if state["writer"] is not None:
                _close(state["writer"], cdc)
                state["writer"] = None
        except BaseException:
            if in_flight is not None:
                in_flight.exception()  # wait for it; its own error, if any, is second to this one
            if state["writer"] is not None:
                state["writer"].close()
            for t in temps:
                t.unlink(missing_ok=True)
            raise
    for old in folder.glob("train-*.parquet"):
        old.unlink()
    for i, t in enumerate(temps):
        os.replace(t, folder / f"train-{i:05d}-of-{len(temps):05d}.parquet")
    return rows


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

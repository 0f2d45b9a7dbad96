"""``hpcqueue ledger export``: one ledger table, as a file the admins' own tools read (CSV, JSON Lines or
Parquet).

Every column of the table is written, in the schema's order, for the rows a :class:`LedgerFilter` selects
(the same rows ``ledger summary`` counts). Rows are read and written in chunks of ``chunk_rows`` (the
database streams them), so a million requests never sit in memory at once. The file is written to a
temporary name beside the target and renamed over it when complete: a reader never sees half an export.

Formats:

- **csv**: a header line, then one line per row; NULL is an empty field, timestamps ISO 8601 UTC
  (``2026-11-21T22:30:01.000000Z``), booleans ``True``/``False``, floats with every digit (they read back
  exactly).
- **json**: JSON Lines, one object per row (``pandas.read_json(path, lines=True)``, ``jq -c``, DuckDB's
  ``read_json``, Spark and BigQuery read it, and it streams); NULL is ``null``, timestamps as in CSV, floats
  to 15 significant digits.
- **parquet**: one row group per chunk with a fixed schema: integers ``int64``, floats ``double``, text
  ``string``, booleans ``bool``, timestamps ``timestamp[us, tz=UTC]``; NULL is null.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, get_args

import pandas as pd
from sqlalchemy import Boolean, DateTime, Float, Integer, Table, exists, select
from sqlalchemy.sql.elements import ColumnElement

from hpcqueue.errors import ConfigError
from hpcqueue.fileio import atomic_open
from hpcqueue.ledger.filters import LedgerFilter
from hpcqueue.ledger.queries import LedgerReader
from hpcqueue.ledger.schema import BatchRow, RequestRow, TaskRow

ExportTable = Literal["batches", "tasks", "requests"]
ExportFormat = Literal["csv", "json", "parquet"]
EXPORT_TABLES: tuple[str, ...] = get_args(ExportTable)
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)
#: Rows per chunk: read from the database, converted and written before the next is read.
DEFAULT_CHUNK_ROWS = 50_000
#: How timestamps are written in CSV and JSON: ISO 8601, UTC, microseconds, one fixed width.
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_TABLES: dict[str, Table] = {
    "batches": BatchRow.__table__,  # type: ignore[dict-item]
    "tasks": TaskRow.__table__,  # type: ignore[dict-item]
    "requests": RequestRow.__table__,  # type: ignore[dict-item]
}
ColumnKind = Literal["int", "float", "bool", "timestamp", "text"]


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: the file, the table, the format and how many rows."""

    path: Path
    table: str
    fmt: str
    rows: int


def column_kinds(table: ExportTable) -> dict[str, ColumnKind]:
    """The table's columns in the schema's order, each with the kind of value it holds."""
    kinds: dict[str, ColumnKind] = {}
    for column in _table(table).columns:
        kinds[column.name] = _kind(column.type)
    return kinds


def _kind(sql_type: Any) -> ColumnKind:
    impl = getattr(sql_type, "impl", sql_type)  # UTCDateTime decorates DateTime
    if isinstance(impl, DateTime):
        return "timestamp"
    if isinstance(impl, Boolean):
        return "bool"
    if isinstance(impl, Integer):  # BigInteger and SmallInteger too
        return "int"
    if isinstance(impl, Float):
        return "float"
    return "text"


def _table(table: str) -> Table:
    try:
        return _TABLES[table]
    except KeyError:
        raise ConfigError(
            f"cannot export table {table!r}; choose one of {', '.join(EXPORT_TABLES)}"
        ) from None


def export_query(table: ExportTable, where: LedgerFilter) -> Any:
    """The ``SELECT`` of every column of ``table`` (schema order) over the rows ``where`` selects, ordered
    by the primary key: the batches (those with a task the filter keeps, when it selects tasks by target or
    account), their tasks, or their requests."""
    sql_table = _table(table)
    clauses: list[ColumnElement[bool]]
    if table == "batches":
        clauses = where.batch_clauses()
        if where.selects_tasks:
            clauses.append(exists().where(TaskRow.batch_id == BatchRow.id, *where.task_clauses()))
    elif table == "tasks":
        clauses = where.task_scope()
    else:
        clauses = where.request_scope()
    return select(*sql_table.columns).where(*clauses).order_by(*sql_table.primary_key.columns)


def read_chunks(
    ledger: LedgerReader, table: ExportTable, where: LedgerFilter, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Iterator[pd.DataFrame]:
    """The rows of ``table`` that ``where`` selects, as DataFrames of at most ``chunk_rows`` rows with one
    dtype per column kind (nullable ``Int64`` and ``boolean``, ``float64``, ``datetime64[us, UTC]``, text
    as objects), streamed from the database."""
    kinds = column_kinds(table)
    with ledger.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=chunk_rows).execute(
            export_query(table, where)
        )
        for rows in result.partitions(chunk_rows):
            yield _typed_frame([tuple(row) for row in rows], kinds)


def _typed_frame(rows: Any, kinds: dict[str, ColumnKind]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(rows, columns=list(kinds), coerce_float=False)
    for name, kind in kinds.items():
        if kind == "int":
            frame[name] = frame[name].astype("Int64")
        elif kind == "bool":
            frame[name] = frame[name].astype("boolean")
        elif kind == "float":
            frame[name] = frame[name].astype("float64")
        elif kind == "timestamp":
            frame[name] = pd.to_datetime(frame[name], utc=True).astype("datetime64[us, UTC]")
        else:
            frame[name] = frame[name].astype(object)
    return frame


def arrow_schema(table: ExportTable) -> Any:
    """The fixed Parquet schema of ``table``'s export (every chunk is cast to it)."""
    import pyarrow as pa

    types = {
        "int": pa.int64(),
        "float": pa.float64(),
        "bool": pa.bool_(),
        "timestamp": pa.timestamp("us", tz="UTC"),
        "text": pa.string(),
    }
    return pa.schema([pa.field(name, types[kind]) for name, kind in column_kinds(table).items()])


def export_table(
    ledger: LedgerReader,
    table: ExportTable,
    fmt: ExportFormat,
    path: str | os.PathLike[str],
    *,
    where: LedgerFilter | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> ExportResult:
    """Write the rows of ``table`` that ``where`` selects (default: all) to ``path`` as ``fmt``, atomically.

    Raises ConfigError for an unknown table or format, or a path that cannot be written (naming why).
    """
    _table(table)
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"cannot export as {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if chunk_rows < 1:
        raise ConfigError(f"chunk_rows must be at least 1, got {chunk_rows}")
    where = where or LedgerFilter()
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"-o {target} is a directory; name the file to write, e.g. {target / table}.{fmt}")
    chunks = read_chunks(ledger, table, where, chunk_rows)
    try:
        with atomic_open(target, "wb") as handle:
            rows = _WRITERS[fmt](chunks, handle, table)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the export to {target}: {exc.strerror or exc}; choose a path in a directory you "
            "can write to (-o)"
        ) from exc
    return ExportResult(path=target, table=table, fmt=fmt, rows=rows)


def _formatted_times(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its timestamp columns as ISO 8601 UTC text (NaT: missing)."""
    times = frame.select_dtypes(include=["datetimetz"]).columns
    if len(times) == 0:
        return frame
    frame = frame.copy()
    for name in times:
        text = frame[name].dt.strftime(TIMESTAMP_FORMAT)
        frame[name] = text.astype(object).where(frame[name].notna(), None)
    return frame


def _write_csv(chunks: Iterator[pd.DataFrame], handle: IO[bytes], table: ExportTable) -> int:
    rows = 0
    header = True
    for frame in chunks:
        text = _formatted_times(frame).to_csv(index=False, header=header, lineterminator="\n")
        handle.write(text.encode("utf-8"))
        header = False
        rows += len(frame)
    if header:  # no rows: the header alone
        handle.write((",".join(column_kinds(table)) + "\n").encode("utf-8"))
    return rows


def _write_json(chunks: Iterator[pd.DataFrame], handle: IO[bytes], table: ExportTable) -> int:
    rows = 0
    for frame in chunks:
        if frame.empty:
            continue
        text = _formatted_times(frame).to_json(
            orient="records", lines=True, double_precision=15, force_ascii=False
        )
        handle.write(text.rstrip("\n").encode("utf-8") + b"\n")
        rows += len(frame)
    return rows


def _write_parquet(chunks: Iterator[pd.DataFrame], handle: IO[bytes], table: ExportTable) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = arrow_schema(table)
    rows = 0
    with pq.ParquetWriter(handle, schema, compression="zstd") as writer:
        for frame in chunks:
            writer.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False))
            rows += len(frame)
    return rows


_WRITERS = {"csv": _write_csv, "json": _write_json, "parquet": _write_parquet}

"""The DuckDB side of the projections: schema, batched upserts, watermarks, rebuilds, reads.

Every batch of one stream is applied to each projection that reads the stream, together
with that projection's watermark (stream, last sequence), in one transaction. Events at or
below a projection's watermark are skipped, so a redelivered batch changes nothing and a
restarted manager resumes where it stopped.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import duckdb

from damselfly.events.codec import AnyEvent
from damselfly.projections import PROJECTIONS
from damselfly.projections.model import ADD, LAST, MAX, MIN, Column, Patches, Projection, Table

log = logging.getLogger("damselfly.projections")

WATERMARKS: Final = ("CREATE TABLE IF NOT EXISTS projection_watermarks (projection VARCHAR, "
                     "stream VARCHAR, last_seq BIGINT NOT NULL, PRIMARY KEY (projection, stream))")

# Queries typed by users reach these connections; none may read or write other files.
SEALED: Final[dict[str, str | bool | int | float | list[str]]] = {
    "enable_external_access": False}

_ON_CONFLICT: Final = {
    LAST: "{c} = COALESCE(excluded.{c}, {t}.{c})",
    ADD: "{c} = {t}.{c} + excluded.{c}",
    MIN: "{c} = LEAST({t}.{c}, excluded.{c})",
    MAX: "{c} = GREATEST({t}.{c}, excluded.{c})",
}


SCHEMAS: Final = ("CREATE TABLE IF NOT EXISTS projection_schemas (projection VARCHAR "
                  "PRIMARY KEY, fingerprint VARCHAR NOT NULL)")


def connect(path: Path, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the projection database; the writer also creates the schema, and empties any
    projection whose definition changed since the file was written, so that the projector
    replays it from the start of the log.

    Raises ``duckdb.IOException`` when another process holds the file for writing.
    """
    if read_only:
        return duckdb.connect(str(path), read_only=True, config=SEALED)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path), config=SEALED)
    con.execute(WATERMARKS)
    con.execute(SCHEMAS)
    stored = dict(con.execute("SELECT projection, fingerprint FROM projection_schemas").fetchall())
    changed = [p for p in PROJECTIONS if stored.get(p.name, fingerprint(p)) != fingerprint(p)]
    if changed:
        log.warning("definition changed, rebuilding from the log: %s",
                    ", ".join(p.name for p in changed))
        reset(con, changed)
    create_schema(con, PROJECTIONS)
    con.execute("INSERT OR REPLACE INTO projection_schemas SELECT unnest($1::VARCHAR[]), "
                "unnest($2::VARCHAR[])", [[p.name for p in PROJECTIONS],
                                          [fingerprint(p) for p in PROJECTIONS]])
    return con


def fingerprint(projection: Projection) -> str:
    """A digest of everything that shapes a projection's rows: its version, streams,
    tables and views."""
    text = repr((projection.version, projection.streams, [t.ddl() for t in projection.tables],
                 sorted(projection.views.items())))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def create_schema(con: duckdb.DuckDBPyConnection, projections: Sequence[Projection]) -> None:
    con.execute(WATERMARKS)
    for p in projections:
        for table in p.tables:
            con.execute(table.ddl())
        for name, sql in p.views.items():
            con.execute(f"CREATE OR REPLACE VIEW {name} AS {sql}")


def _value_sql(column: Column, index: int) -> str:
    if column.sql_type == "TIMESTAMP":
        return f"make_timestamp(CAST(unnest(${index}::DOUBLE[]) * 1000000 AS BIGINT))"
    return f"unnest(${index}::{column.sql_type}[])"


def _upsert_sql(table: Table) -> str:
    columns = table.key + table.columns
    names = ", ".join(c.name for c in columns)
    values = ", ".join(_value_sql(c, i) for i, c in enumerate(columns, 1))
    key = ", ".join(c.name for c in table.key)
    updates = ", ".join(_ON_CONFLICT[c.merge].format(c=c.name, t=table.name) for c in table.columns)
    return (f"INSERT INTO {table.name} ({names}) SELECT {values} "
            f"ON CONFLICT ({key}) DO UPDATE SET {updates}")


def write(con: duckdb.DuckDBPyConnection, patches: Patches) -> None:
    """Upsert a table's patches in one statement, one list parameter per column."""
    if not patches.rows:
        return
    table = patches.table
    keys = list(patches.rows)
    params: list[list[object]] = [[k[i] for k in keys] for i in range(len(table.key))]
    rows = list(patches.rows.values())
    for c in table.columns:
        default = 0 if c.merge == ADD else None
        params.append([r.get(c.name, default) for r in rows])
    con.execute(_upsert_sql(table), params)


def watermarks(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], int]:
    rows = con.execute("SELECT projection, stream, last_seq FROM projection_watermarks").fetchall()
    return {(p, s): int(seq) for p, s, seq in rows}


def start_seq(con: duckdb.DuckDBPyConnection, stream: str) -> int:
    """Where a consumer of ``stream`` must start so that no projection misses an event."""
    marks = watermarks(con)
    return min(marks.get((p.name, stream), 0) for p in readers(stream)) + 1


def readers(stream: str) -> tuple[Projection, ...]:
    return tuple(p for p in PROJECTIONS if stream in p.streams)


def streams() -> tuple[str, ...]:
    return tuple(dict.fromkeys(s for p in PROJECTIONS for s in p.streams))


def apply_batch(con: duckdb.DuckDBPyConnection, stream: str,
                batch: Sequence[tuple[int, AnyEvent]]) -> int:
    """Apply events (stream sequence, event), in sequence order, to every projection of the
    stream; returns how many (projection, event) pairs were new. One transaction: on any
    error nothing of the batch is kept."""
    applied = 0
    moved: list[str] = []
    con.execute("BEGIN TRANSACTION")
    try:
        marks = watermarks(con)
        for projection in readers(stream):
            mark = marks.get((projection.name, stream), 0)
            fresh = [event for seq, event in batch if seq > mark]
            if not fresh:
                continue
            for patches in projection.fold(fresh):
                write(con, patches)
            moved.append(projection.name)
            applied += len(fresh)
        if moved:  # one statement for all: each costs DuckDB milliseconds, whatever its size
            con.execute("INSERT OR REPLACE INTO projection_watermarks "
                        "SELECT unnest($1::VARCHAR[]), $2, $3", [moved, stream, batch[-1][0]])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return applied


def skip(con: duckdb.DuckDBPyConnection, stream: str, seq: int) -> None:
    """Move every projection of ``stream`` that stands before ``seq`` to it, leaving out an
    event none of them can apply. Only for the next event in order after the watermarks."""
    marks = watermarks(con)
    behind = [p.name for p in readers(stream) if marks.get((p.name, stream), 0) < seq]
    if behind:
        con.execute("INSERT OR REPLACE INTO projection_watermarks "
                    "SELECT unnest($1::VARCHAR[]), $2, $3", [behind, stream, seq])


def reset(con: duckdb.DuckDBPyConnection, projections: Sequence[Projection]) -> None:
    """Drop the projections' tables, views and watermarks and create them empty, atomically."""
    con.execute("BEGIN TRANSACTION")
    try:
        for p in projections:
            for view in p.views:
                con.execute(f"DROP VIEW IF EXISTS {view}")
            for table in p.tables:
                con.execute(f"DROP TABLE IF EXISTS {table.name}")
            con.execute("DELETE FROM projection_watermarks WHERE projection = ?", [p.name])
        create_schema(con, projections)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


@dataclass(frozen=True)
class Result:
    columns: list[str]
    rows: list[tuple[object, ...]]
    truncated: bool = False  # more rows than asked for were left out


class NotReadOnly(ValueError):
    """The SQL is not one read-only statement."""


def check_read_only(sql: str) -> None:
    """Accept exactly one SELECT (or WITH … SELECT); raises ``NotReadOnly`` otherwise."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise NotReadOnly(str(exc).splitlines()[0]) from exc
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise NotReadOnly("only one SELECT statement is allowed")


def query(con: duckdb.DuckDBPyConnection, sql: str, params: list[object] | None = None,
          max_rows: int | None = None) -> Result:
    """Run one query, keeping at most ``max_rows`` rows. Raises ``duckdb.Error`` with
    DuckDB's message."""
    cursor = con.execute(sql, params)
    columns = [d[0] for d in cursor.description or []]
    if max_rows is None:
        return Result(columns, cursor.fetchall())
    rows = cursor.fetchmany(max_rows + 1)
    return Result(columns, rows[:max_rows], truncated=len(rows) > max_rows)


def plain(value: object) -> object:
    """A DuckDB value as a JSON-able one (times as ISO text, decimals as floats)."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return value

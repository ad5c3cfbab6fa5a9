"""Read access to the manager's DuckDB for HTTP handlers: off the event loop, never
blocking the projection writer (each read gets its own cursor, i.e. its own MVCC view)."""

from __future__ import annotations

import asyncio
import threading

import duckdb

from projections import store


class Reader:
    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        # A connection of its own, so cursors are never made on the one the writer is using.
        self._con = con.cursor()
        self._lock = threading.Lock()

    def _run(self, sql: str, params: list[object] | None, max_rows: int | None
             ) -> store.Result:
        with self._lock:
            cursor = self._con.cursor()
        try:
            return store.query(cursor, sql, params, max_rows)
        finally:
            cursor.close()

    async def query(self, sql: str, params: list[object] | None = None,
                    max_rows: int | None = None) -> store.Result:
        """Run one query in a worker thread. Raises ``duckdb.Error``."""
        return await asyncio.to_thread(self._run, sql, params, max_rows)

    async def records(self, sql: str, params: list[object] | None = None) -> list[dict[str, object]]:
        result = await self.query(sql, params)
        return [{c: store.plain(v) for c, v in zip(result.columns, row)} for row in result.rows]

    def close(self) -> None:
        self._con.close()

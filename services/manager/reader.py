"""Read access to the manager's DuckDB for HTTP handlers: off the event loop, never
blocking the projection writer (each read gets its own cursor, i.e. its own MVCC view).
A read for a caller bound to a tenant sees only that tenant's rows (``tenancy``)."""

from __future__ import annotations

import asyncio
import threading

import duckdb

from damselfly.projections import store
from damselfly.services.manager import tenancy

RELATIONS = ("SELECT table_name, list(column_name) FROM information_schema.columns "
             "WHERE table_schema = 'main' GROUP BY table_name")


class Reader:
    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        """``con``: a projection database whose schema is in place (``store.connect``)."""
        # A connection of its own, so cursors are never made on the one the writer is using.
        self._con = con.cursor()
        self._lock = threading.Lock()
        # Every table and view with its columns, read once: the projections' code fixes them,
        # and a rebuild recreates the same ones (read mid-rebuild, one could be missing and
        # so not shadowed for tenants).
        self._relations = {name: set(cols)
                           for name, cols in self._con.execute(RELATIONS).fetchall()}

    def _run(self, sql: str, params: list[object] | None, max_rows: int | None, tenant: str
             ) -> store.Result:
        with self._lock:
            cursor = self._con.cursor()
        try:
            if tenant:
                sql, params = tenancy.scoped(sql, params, self._relations, tenant)
            return store.query(cursor, sql, params, max_rows)
        finally:
            cursor.close()

    async def query(self, sql: str, params: list[object] | None = None,
                    max_rows: int | None = None, tenant: str = "") -> store.Result:
        """Run one query in a worker thread, over only ``tenant``'s rows when one is given.
        Raises ``duckdb.Error``."""
        return await asyncio.to_thread(self._run, sql, params, max_rows, tenant)

    async def records(self, sql: str, params: list[object] | None = None, tenant: str = ""
                      ) -> list[dict[str, object]]:
        result = await self.query(sql, params, tenant=tenant)
        return [{c: store.plain(v) for c, v in zip(result.columns, row, strict=True)}
                for row in result.rows]

    async def caught_up(self, projection: str, stream: str, seq: int, timeout: float) -> bool:
        """Wait until ``projection`` has applied ``stream`` up to ``seq`` (a write this
        manager just published, so the next read sees it); False after ``timeout`` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            rows = await self.records("SELECT last_seq FROM projection_watermarks WHERE "
                                      "projection = ? AND stream = ?", [projection, stream])
            if rows and int(str(rows[0]["last_seq"])) >= seq:
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.01)

    def close(self) -> None:
        self._con.close()

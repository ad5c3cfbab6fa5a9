"""What a manager's read model holds, to compare two DuckDB files row for row."""

from __future__ import annotations

import duckdb

from damselfly.projections import PROJECTIONS


def rows(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[object, ...]]]:
    """Every projection table's rows, sorted, by table name."""
    cursor = con.cursor()
    try:
        return {t.name: sorted(cursor.execute(f"SELECT * FROM {t.name}").fetchall(), key=repr)
                for p in PROJECTIONS for t in p.tables}
    finally:
        cursor.close()

"""Printing query results as an aligned table, CSV or JSON lines of objects. Pure."""

from __future__ import annotations

import csv
import io
import json
from typing import Final

from damselfly.projections.store import Result, plain

FORMATS: Final = ("table", "csv", "json")


def _cell(value: object) -> str:
    value = plain(value)
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def render(result: Result, fmt: str) -> str:
    """The result as text in ``fmt``; ends with a newline."""
    if fmt == "json":
        rows = [{c: plain(v) for c, v in zip(result.columns, row, strict=True)}
                for row in result.rows]
        return json.dumps(rows, indent=2) + "\n"
    cells = [[_cell(v) for v in row] for row in result.rows]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(result.columns)
        writer.writerows(cells)
        return out.getvalue()
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}; use {', '.join(FORMATS)}")
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(result.columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(result.columns, widths, strict=True)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
              for row in cells]
    lines.append(f"({len(cells)} row{'s' if len(cells) != 1 else ''})")
    return "\n".join(lines) + "\n"

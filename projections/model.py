"""How a projection is described, and the pure fold of a batch of events into row patches.

A projection folds events into *patches*: per table, per primary key, the columns an event
changes. Each column has a merge rule, applied the same way when two events of one batch
touch a row (here, in Python) and when a patch meets the stored row (in SQL, see
``projections.store``). Because the rules are associative, how a stream is cut into batches
never changes the resulting rows — which is what makes a rebuild identical.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from damselfly.events.codec import AnyEvent

LAST: Final = "last"  # the latest non-null value wins
ADD: Final = "add"  # counters: summed
MIN: Final = "min"
MAX: Final = "max"

Value = str | int | float | bool | list[str] | None
Key = tuple[Value, ...]


@dataclass(frozen=True)
class Column:
    """A stored column. ``TIMESTAMP`` columns take unix seconds in patches."""

    name: str
    sql_type: str
    merge: str = LAST


@dataclass(frozen=True)
class Table:
    """A projection table: key columns first, then the merged ones, then derived ones.

    ``derived`` are SQL expressions stored as generated columns (``name: expression``).
    """

    name: str
    key: tuple[Column, ...]
    columns: tuple[Column, ...]
    derived: dict[str, str] = field(default_factory=dict)

    def ddl(self) -> str:
        cols = [f"{c.name} {c.sql_type} NOT NULL" for c in self.key]
        cols += [f"{c.name} {c.sql_type}" + (" NOT NULL DEFAULT 0" if c.merge == ADD else "")
                 for c in self.columns]
        cols += [f"{name} AS ({expr})" for name, expr in self.derived.items()]
        key = ", ".join(c.name for c in self.key)
        return f"CREATE TABLE IF NOT EXISTS {self.name} ({', '.join(cols)}, PRIMARY KEY ({key}))"


def _merge(rule: str, old: Value, new: Value) -> Value:
    if new is None:
        return old
    if old is None:
        return new
    if rule == ADD:
        return old + new  # type: ignore[operator]
    if rule == LAST:
        return new
    if rule == MIN:
        return min(old, new)
    return max(old, new)


class Patches:
    """The changes a batch makes to one table, merged per key."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.rows: dict[Key, dict[str, Value]] = {}
        self._rules = {c.name: c.merge for c in table.columns}

    def put(self, key: Key, **values: Value) -> None:
        row = self.rows.get(key)
        if row is None:
            self.rows[key] = {k: v for k, v in values.items() if v is not None}
            return
        rules = self._rules
        for name, value in values.items():
            row[name] = _merge(rules[name], row.get(name), value)


Fold = Callable[[Sequence[AnyEvent]], Iterable[Patches]]


@dataclass(frozen=True)
class Projection:
    """One read model: the streams it reads, its tables and views, and its pure fold.

    Bump ``version`` when the fold changes what existing rows should hold: like a changed
    table, it makes the manager rebuild the projection from the log on its next start.
    """

    name: str
    streams: tuple[str, ...]
    tables: tuple[Table, ...]
    fold: Fold
    views: dict[str, str] = field(default_factory=dict)
    version: int = 1

"""What a caller bound to a tenant may read, as SQL.

A tenant-bound read runs under a ``WITH`` clause that shadows every table and view of the
projection database with a CTE of the same name keeping only the tenant's rows: its tasks
(``tasks.application``), the peers, pieces and decisions of those tasks, the hosts that
took part in them, the jobs it asked for and their per-host outcomes. Every other relation
(users, tokens, cluster configs, watermarks, …) is shadowed by an empty one, so a query
written for the whole database — a dashboard panel, a list — reads only the tenant's part
without knowing about tenants. Schema-qualified names (``main.tasks``) bypass the shadow,
which is why the raw SQL door stays root-only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Final

LEADING_NOISE: Final = re.compile(r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.DOTALL)
WITH: Final = re.compile(r"WITH(?:\s+(RECURSIVE))?\s+", re.IGNORECASE)


def _rule(name: str, columns: AbstractSet[str]) -> tuple[int, str, int]:
    """``(order, WHERE condition, number of tenant parameters)`` for one relation; the
    order puts every CTE after the ones it reads."""
    if name == "tasks":
        return 0, "application = ?", 1
    if name == "hosts":
        return 2, "host_id IN (SELECT host_id FROM peers)", 0
    if name == "jobs":
        return 3, ("job_id IN (SELECT job_id FROM main.admin_job_tenants WHERE tenant = ?)"), 1
    if "job_id" in columns:
        return 4, "job_id IN (SELECT job_id FROM jobs)", 0
    if "task_id" in columns:
        return 1, "task_id IN (SELECT task_id FROM tasks)", 0
    return 5, "false", 0


def shadows(relations: Mapping[str, AbstractSet[str]], tenant: str
            ) -> tuple[list[str], list[object]]:
    """The CTEs (``name AS (…)``) that keep ``tenant``'s rows of each relation (name →
    column names), with their parameters in order."""
    ruled = sorted((_rule(name, cols), name) for name, cols in relations.items())
    ctes = [f'"{name}" AS (SELECT * FROM main."{name}" WHERE {cond})'
            for (_, cond, _), name in ruled]
    params: list[object] = [tenant for (_, _, n), _ in ruled for _ in range(n)]
    return ctes, params


def scoped(sql: str, params: list[object] | None, relations: Mapping[str, AbstractSet[str]],
           tenant: str) -> tuple[str, list[object]]:
    """``sql`` rewritten to read only ``tenant``'s rows, and its parameters."""
    ctes, ours = shadows(relations, tenant)
    body = sql[LEADING_NOISE.match(sql).end():]  # type: ignore[union-attr]
    head = WITH.match(body)
    if head is None:
        text = f"WITH {', '.join(ctes)} {body}"
    else:
        recursive = " RECURSIVE" if head.group(1) else ""
        text = f"WITH{recursive} {', '.join(ctes)}, {body[head.end():]}"
    return text, ours + list(params or [])

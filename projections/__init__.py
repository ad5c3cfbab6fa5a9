"""DuckDB projections of the event log: one module per read model, registered here."""

from __future__ import annotations

from typing import Final

from damselfly.projections import (
    admin,
    configs,
    decisions,
    downloads,
    hosts,
    jobs,
    peers,
    pieces,
    tasks,
)
from damselfly.projections.model import Projection

PROJECTIONS: Final[tuple[Projection, ...]] = (
    hosts.PROJECTION, tasks.PROJECTION, peers.PROJECTION, downloads.PROJECTION,
    pieces.PROJECTION, decisions.PROJECTION, jobs.PROJECTION, configs.PROJECTION,
    admin.PROJECTION,
)


def by_name(names: list[str] | None) -> tuple[Projection, ...]:
    """The named projections (all when ``names`` is empty). Raises ``ValueError`` on an
    unknown name."""
    if not names:
        return PROJECTIONS
    known = {p.name: p for p in PROJECTIONS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown projection {', '.join(unknown)}; have {', '.join(known)}")
    return tuple(known[n] for n in names)

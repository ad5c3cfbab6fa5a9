"""Cluster configuration: the scheduler limits and evaluator weights in force per cluster."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from damselfly.events.codec import AnyEvent
from damselfly.events.config import ClusterConfigSet
from damselfly.events.streams import CONFIG_STREAM
from damselfly.projections.model import Column, Patches, Projection, Table

CONFIGS = Table(
    "cluster_configs",
    key=(Column("cluster", "VARCHAR"),),
    columns=(
        Column("candidate_parent_limit", "INTEGER"), Column("filter_parent_limit", "INTEGER"),
        Column("back_to_source_limit", "INTEGER"), Column("retry_limit", "INTEGER"),
        Column("weights", "JSON"), Column("updated_at", "TIMESTAMP"),
    ),
)


def fold(events: Sequence[AnyEvent]) -> list[Patches]:
    configs = Patches(CONFIGS)
    for e in events:
        if isinstance(e, ClusterConfigSet):
            c = e.config
            configs.put((e.cluster,), candidate_parent_limit=c.candidate_parent_limit,
                        filter_parent_limit=c.filter_parent_limit,
                        back_to_source_limit=c.back_to_source_limit,
                        retry_limit=c.retry_limit,
                        weights=msgspec.json.encode(c.weights).decode(), updated_at=e.at)
    return [configs]


PROJECTION = Projection("configs", (CONFIG_STREAM,), (CONFIGS,), fold)

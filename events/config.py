"""Dynamic configuration: the last value per subject is the one in force.

Subjects: ``df.config.<scope>`` (``scope`` is e.g. ``cluster.<id>``).
"""

from __future__ import annotations

from typing import Final

import msgspec

from damselfly.events.base import Event

DEFAULT_WEIGHTS: Final = {
    "pieces": 0.2, "upload_success": 0.2, "free_upload": 0.15,
    "host_type": 0.15, "idc": 0.15, "location": 0.15,
}
"""Dragonfly's default evaluator weights: the features a cluster's ``weights`` may name."""


class ClusterConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Scheduler limits and evaluator weights of one scheduler cluster."""

    candidate_parent_limit: int = 15
    filter_parent_limit: int = 15
    back_to_source_limit: int = 3
    retry_limit: int = 5
    weights: dict[str, float] = msgspec.field(default_factory=dict)


class ClusterConfigSet(Event, frozen=True, kw_only=True, tag="config.cluster_set.v1"):
    """The configuration of a scheduler cluster changed."""

    cluster: str
    config: ClusterConfig


ConfigEvent = ClusterConfigSet

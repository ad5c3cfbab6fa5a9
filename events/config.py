"""Dynamic configuration: the last value per subject is the one in force.

Subjects: ``df.config.<scope>`` (``scope`` is e.g. ``cluster.<id>``).
"""

from __future__ import annotations

from typing import Final

import msgspec

from damselfly.events.base import Event
from damselfly.events.fields import FilterLimit, Limit, ParentLimit, Token, Weights

DEFAULT_WEIGHTS: Final = {
    "pieces": 0.2, "upload_success": 0.2, "free_upload": 0.15,
    "host_type": 0.15, "idc": 0.15, "location": 0.15,
}
"""Dragonfly's default evaluator weights: the features a cluster's ``weights`` may name."""


class ClusterConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Scheduler limits and evaluator weights of one scheduler cluster."""

    candidate_parent_limit: ParentLimit = 15
    filter_parent_limit: FilterLimit = 15
    back_to_source_limit: Limit = 3
    retry_limit: Limit = 5
    weights: Weights = msgspec.field(default_factory=dict)


class ClusterConfigSet(Event, frozen=True, kw_only=True, tag="config.cluster_set.v1"):
    """The configuration of a scheduler cluster changed."""

    cluster: Token
    config: ClusterConfig


ConfigEvent = ClusterConfigSet

"""Scheduling decisions: what the scheduler chose for each peer, and how long it took.

Latency is measured from the peer's registration. Registrations live on DF_TASKS and
decisions on DF_SCHED, which arrive independently, so both are stored and joined in the
``decision_latency`` view when read.
"""

from __future__ import annotations

from collections.abc import Sequence

from damselfly.events.codec import AnyEvent
from damselfly.events.sched import (
    BackToSourceOrdered,
    ParentsAssigned,
    PeerQueued,
    ScheduleFailed,
    SeedPeerTriggered,
)
from damselfly.events.streams import SCHED_STREAM, TASKS_STREAM
from damselfly.events.tasks import PeerRegistered
from damselfly.projections.model import MIN, Column, Patches, Projection, Table

DECISIONS = Table(
    "decisions",
    key=(Column("decision_id", "VARCHAR"),),
    columns=(
        Column("cluster", "VARCHAR"), Column("task_id", "VARCHAR"),
        Column("addressee", "VARCHAR"), Column("kind", "VARCHAR"),
        Column("trigger_id", "VARCHAR"), Column("parents", "VARCHAR[]"),
        Column("seed_parents", "INTEGER"), Column("reason", "VARCHAR"),
        Column("decided_at", "TIMESTAMP"),
    ),
    derived={"parent_count": "len(parents)"},
)

REGISTRATIONS = Table(
    "registrations",
    key=(Column("task_id", "VARCHAR"), Column("peer_id", "VARCHAR")),
    columns=(Column("cluster", "VARCHAR"), Column("registration_id", "VARCHAR"),
             Column("registered_at", "TIMESTAMP", MIN)),
)

# A decision about a peer counts from that peer's registration; a seed trigger (addressed
# to a host) from the registration that caused it. Two joins, each on the rows it serves:
# one join with an OR, or both joins on every row, costs twice as much at 100k decisions.
LATENCY_VIEW = """
SELECT d.*, r.registered_at, epoch_ms(d.decided_at) - epoch_ms(r.registered_at) AS latency_ms
FROM decisions d
LEFT JOIN registrations r ON r.task_id = d.task_id AND r.peer_id = d.addressee
WHERE d.kind <> 'seed_triggered'
UNION ALL
SELECT d.*, r.registered_at, epoch_ms(d.decided_at) - epoch_ms(r.registered_at) AS latency_ms
FROM decisions d
LEFT JOIN registrations r ON r.task_id = d.task_id AND r.registration_id = d.trigger_id
WHERE d.kind = 'seed_triggered'
"""


def fold(events: Sequence[AnyEvent]) -> list[Patches]:
    decisions = Patches(DECISIONS)
    registrations = Patches(REGISTRATIONS)
    for e in events:
        match e:
            case PeerRegistered():
                registrations.put((e.task_id, e.peer_id), cluster=e.cluster,
                                  registration_id=e.id, registered_at=e.at)
            case ParentsAssigned():
                decisions.put((e.id,), cluster=e.cluster, task_id=e.task_id, addressee=e.peer_id,
                              kind="parents_assigned", trigger_id=e.trigger_id,
                              parents=[p.peer_id for p in e.parents],
                              seed_parents=sum(p.seed for p in e.parents), decided_at=e.at)
            case BackToSourceOrdered():
                decisions.put((e.id,), cluster=e.cluster, task_id=e.task_id, addressee=e.peer_id,
                              kind="back_to_source", trigger_id=e.trigger_id, parents=[],
                              seed_parents=0, reason=e.reason, decided_at=e.at)
            case SeedPeerTriggered():
                decisions.put((e.id,), cluster=e.cluster, task_id=e.task_id, addressee=e.host_id,
                              kind="seed_triggered", trigger_id=e.trigger_id, parents=[],
                              seed_parents=0, decided_at=e.at)
            case PeerQueued():
                decisions.put((e.id,), cluster=e.cluster, task_id=e.task_id, addressee=e.peer_id,
                              kind="queued", trigger_id=e.trigger_id, parents=[],
                              seed_parents=0, reason=e.reason, decided_at=e.at)
            case ScheduleFailed():
                decisions.put((e.id,), cluster=e.cluster, task_id=e.task_id, addressee=e.peer_id,
                              kind="failed", trigger_id=e.trigger_id, parents=[],
                              seed_parents=0, reason=e.reason, decided_at=e.at)
    return [decisions, registrations]


PROJECTION = Projection("decisions", (SCHED_STREAM, TASKS_STREAM), (DECISIONS, REGISTRATIONS), fold,
                        views={"decision_latency": LATENCY_VIEW})

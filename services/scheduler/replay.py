"""The replay debugger: run a recorded log through the core offline and explain each decision.

Records are folded in log order (the order ``damselfly events dump`` writes), one core state
per partition as in a live scheduler, so the decisions come out exactly as recorded. With
other weights the same log shows which decisions would have changed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TextIO

import msgspec

from damselfly.events.base import Event
from damselfly.events.config import DEFAULT_WEIGHTS
from damselfly.events.log import LogRecord
from damselfly.events.sched import (
    BackToSourceOrdered,
    HoldingsRelayed,
    ParentsAssigned,
    ScheduleFailed,
    SeedPeerTriggered,
)
from damselfly.events.streams import CONFIG_STREAM, HOSTS_STREAM, SCHED_STREAM, TASKS_STREAM
from damselfly.events.subjects import PARTITIONS, partition
from damselfly.services.scheduler import core

_FOLDED_STREAMS = (HOSTS_STREAM, CONFIG_STREAM)


@dataclass
class Decided:
    decision: Event
    trigger: LogRecord
    explained: list[core.Explained]


@dataclass
class Replay:
    decided: list[Decided] = field(default_factory=list)
    recorded: dict[str, Event] = field(default_factory=dict)

    def as_recorded(self, d: Decided) -> bool:
        """Whether the record holds this decision; ``at`` is when a live scheduler made it,
        and the upload grants are what its shell signed (``events/grants.py``)."""
        recorded = self.recorded.get(d.decision.id)
        return recorded is not None and _ungranted(
            msgspec.structs.replace(recorded, at=d.decision.at)) == d.decision

    def mismatches(self) -> tuple[list[Decided], list[Event]]:
        """Replayed decisions that differ from (or are missing in) the record, and recorded
        decisions the replay did not produce."""
        produced = {d.decision.id for d in self.decided}
        differ = [d for d in self.decided if not self.as_recorded(d)]
        missing = [e for i, e in self.recorded.items() if i not in produced]
        return differ, missing


def _ungranted(decision: Event) -> Event:
    if not isinstance(decision, ParentsAssigned):
        return decision
    return msgspec.structs.replace(decision, parents=[
        msgspec.structs.replace(p, grant="") for p in decision.parents])


def parse_weights(text: str) -> dict[str, float]:
    """``pieces=0.5,idc=0`` as a dict. Raises ``ValueError`` naming the bad part."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name.strip() not in DEFAULT_WEIGHTS:
            raise ValueError(f"--weights: expected one of {sorted(DEFAULT_WEIGHTS)}=NUMBER, "
                             f"got {part!r}")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--weights: not a number in {part!r}") from None
    return weights


def replay(records: Iterable[LogRecord], cluster: str,
           weights: dict[str, float] | None = None) -> Replay:
    """Fold ``records`` (log order) through one core state per partition."""
    states = [core.new_state(cluster, weights) for _ in range(PARTITIONS)]
    result = Replay()
    for record in records:
        event = record.event
        if getattr(event, "cluster", cluster) != cluster:
            continue
        if record.stream == SCHED_STREAM:
            if not isinstance(event, HoldingsRelayed):  # made on a timer, not by a trigger
                result.recorded[event.id] = event
        elif record.stream == TASKS_STREAM:
            _fold(states[partition(event.task_id)], record, result)  # type: ignore[union-attr]
        elif record.stream in _FOLDED_STREAMS:
            for state in states:
                _fold(state, record, result)
    return result


def _fold(state: core.State, record: LogRecord, result: Replay) -> None:
    trace: list[core.Explained] = []
    for decision in core.step(state, record.event, trace):
        peer = getattr(decision, "peer_id", None)
        mine = [t for t in trace if t.peer_id == peer]
        result.decided.append(Decided(decision, record, mine[-1:]))


def describe(decision: Event) -> str:
    match decision:
        case ParentsAssigned():
            return f"{decision.peer_id} <- {', '.join(p.peer_id for p in decision.parents)}"
        case BackToSourceOrdered():
            return f"{decision.peer_id} -> origin ({decision.reason})"
        case SeedPeerTriggered():
            return f"seed host {decision.host_id} fetches task {decision.task_id[:12]}"
        case ScheduleFailed():
            return f"{decision.peer_id} failed: {decision.reason}"
    return type(decision).__name__


def print_decisions(result: Replay, out: TextIO) -> None:
    features = list(DEFAULT_WEIGHTS)
    for d in result.decided:
        mark = "" if not result.recorded else (
            "  [as recorded]" if result.as_recorded(d) else
            "  [NOT RECORDED]" if d.decision.id not in result.recorded
            else "  [DIFFERS FROM RECORD]")
        print(f"{d.trigger.stream} #{d.trigger.seq} {type(d.trigger.event).__name__}: "
              f"{type(d.decision).__name__} {describe(d.decision)}{mark}", file=out)
        for explained in d.explained:
            if not explained.rows:
                continue
            print(f"    {'candidate':<24} {'score':>7} " + " ".join(f"{f:>14}" for f in features),
                  file=out)
            for row in explained.rows:
                print(f"    {row.peer_id:<24} {row.score:7.3f} "
                      + " ".join(f"{row.features[f]:14.3f}" for f in features), file=out)


def print_changes(before: Replay, after: Replay, out: TextIO) -> int:
    """List the decisions that differ between two replays of one log; returns how many."""
    def keyed(r: Replay) -> dict[tuple[str, str], Decided]:
        return {(d.decision.trigger_id, _addressee(d.decision)): d  # type: ignore[attr-defined]
                for d in r.decided}

    old, new = keyed(before), keyed(after)
    changed = 0
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key), new.get(key)
        was = describe(a.decision) if a else "(no decision)"
        now = describe(b.decision) if b else "(no decision)"
        if was != now or (a and b and type(a.decision) is not type(b.decision)):
            changed += 1
            trigger = (a or b).trigger  # type: ignore[union-attr]
            print(f"{trigger.stream} #{trigger.seq} {type(trigger.event).__name__}: "
                  f"{was}  =>  {now}", file=out)
    print(f"{changed} of {len(old)} decisions change", file=out)
    return changed


def _addressee(decision: Event) -> str:
    return str(getattr(decision, "peer_id", None) or getattr(decision, "host_id", ""))

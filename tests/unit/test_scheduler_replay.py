"""The replay debugger on an in-memory log: reproduce, detect a tampered record, re-weigh."""

from __future__ import annotations

import io

import pytest

from damselfly.events.base import Event
from damselfly.events.codec import AnyEvent
from damselfly.events.log import LogRecord
from damselfly.events.sched import ParentsAssigned
from damselfly.events.subjects import subject_for
from damselfly.services.scheduler import core
from damselfly.services.scheduler.replay import (
    parse_weights,
    print_changes,
    print_decisions,
    replay,
)
from tests.support.scheduling import C, scripted_swarm


def recorded_log() -> list[LogRecord]:
    """The scripted swarm as a dump would hold it: each trigger, then the decisions it caused."""
    streams = {"host": "DF_HOSTS", "task": "DF_TASKS", "sched": "DF_SCHED", "config": "DF_CONFIG"}
    state = core.new_state(C)
    records: list[LogRecord] = []

    def add(event: Event) -> None:
        assert isinstance(event, AnyEvent)  # the core returns catalogue events typed as Event
        subject = subject_for(event)
        records.append(LogRecord(stream=streams[subject.split(".")[1]], seq=len(records) + 1,
                                 subject=subject, time=float(len(records)), event=event))

    for event in scripted_swarm():
        add(event)
        for decision in core.step(state, event):
            add(decision)
    return records


def test_a_recorded_log_replays_to_exactly_its_decisions() -> None:
    records = recorded_log()
    result = replay(records, C)
    assert len(result.recorded) > 12
    assert result.mismatches() == ([], [])
    assert [d.decision for d in result.decided] == [r.event for r in records
                                                    if r.stream == "DF_SCHED"]
    out = io.StringIO()
    print_decisions(result, out)
    assert out.getvalue().count("[as recorded]") == len(result.recorded)
    assert "candidate" in out.getvalue() and "location" in out.getvalue()


def test_a_decision_the_core_would_not_make_is_reported() -> None:
    records = recorded_log()
    i = next(i for i, r in enumerate(records) if isinstance(r.event, ParentsAssigned)
             and len(r.event.parents) > 1)
    forged = records[i].event
    assert isinstance(forged, ParentsAssigned)
    records[i] = LogRecord(stream="DF_SCHED", seq=records[i].seq, subject=records[i].subject,
                           time=records[i].time,
                           event=ParentsAssigned(**{**{f: getattr(forged, f)
                                                       for f in forged.__struct_fields__},
                                                    "parents": forged.parents[::-1]}))
    differ, missing = replay(records, C).mismatches()
    assert [d.decision.id for d in differ] == [forged.id] and missing == []


def test_other_weights_list_the_decisions_that_change() -> None:
    records = recorded_log()
    out = io.StringIO()
    changed = print_changes(replay(records, C), replay(records, C, {"idc": 0.0}), out)
    assert changed > 0
    assert out.getvalue().count("=>") == changed
    same = print_changes(replay(records, C), replay(records, C), io.StringIO())
    assert same == 0


@pytest.mark.parametrize("text", ["speed=1", "pieces", "pieces=fast"])
def test_bad_weights_are_one_clear_error(text: str) -> None:
    with pytest.raises(ValueError, match="--weights"):
        parse_weights(text)


def test_weights_parse() -> None:
    assert parse_weights("pieces=0.5, idc=0") == {"pieces": 0.5, "idc": 0.0}

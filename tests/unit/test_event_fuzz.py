"""Forged and corrupt events: mutate each sample event at random, and the only outcomes
allowed are "dead-lettered" (the decoder refuses it, so every consumer sends it to the
dead-letter subject) or "applied" by the scheduler core, every projection and the peer's
downloader core without an exception (issue 12)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from damselfly.events.codec import EventDecodeError, decode
from damselfly.events.sched import HoldingsRelayed, ParentsAssigned, PeerQueued
from damselfly.events.subjects import subject_for
from damselfly.projections import store
from damselfly.services.peer.fetchbook import Book, Shaped, decide
from damselfly.services.scheduler import core
from tests.support.scheduling import TASK, C, scripted_swarm
from tests.support.synthetic import by_stream

SAMPLES = Path(__file__).parent / "samples"
# The samples' ids, renamed to those of the scripted swarm so that a mutated event meets a
# task, peers and hosts the scheduler knows.
RENAMES = {"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08": TASK,
           "host-a-9f8e7d6c": "seed-p", "host-b-1a2b3c4d": "p1", '"host-a"': '"seed"',
           '"host-b"': '"h1"', '"default"': f'"{C}"'}


def _samples() -> list[dict[str, Any]]:
    out = []
    for path in sorted(SAMPLES.glob("events-*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                for old, new in RENAMES.items():
                    line = line.replace(old, new)
                out.append(msgspec.json.decode(line))
    return out


SAMPLE_EVENTS = _samples()
HOSTILE_TEXT = ["", ".", "..", "../../etc/passwd", "/abs/path", "a.b", "*", ">", "a b", "A" * 65,
                "f" * 63, "F" * 64, "g" * 64, "\x00", "é", "sha256:", "sha256:zz",
                "md5:" + "0" * 129, "x" * 10_000, "seed-p", "p1", TASK]
HOSTILE_INTS = [-(2**63) - 1, -1, 0, 1, 3, 4, 5, 2**22, 2**22 + 1, 2**31, 2**50 + 1, 2**53 + 1,
                2**63 - 1, 2**63, 2**64]
HOSTILE = st.one_of(
    st.sampled_from(HOSTILE_TEXT), st.text(max_size=40), st.sampled_from(HOSTILE_INTS),
    st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.none(), st.booleans(),
    st.lists(st.sampled_from([*HOSTILE_TEXT[:8], *HOSTILE_INTS[:6]]), max_size=6),
    st.dictionaries(st.sampled_from(HOSTILE_TEXT[:8]), st.sampled_from(HOSTILE_TEXT[:8]),
                    max_size=3),
    st.builds(lambda n: [0] * n, st.sampled_from([5, 10_001])))


def plausible(original: Any) -> st.SearchStrategy[Any]:
    """Values of the original's type that are valid or nearly so: other ids, unknown ones,
    bounds, empty and repeated lists. Most of these decode, so they reach the handlers."""
    match original:
        case bool():
            return st.booleans()
        case int():
            return st.one_of(st.integers(-2, 70), st.sampled_from(HOSTILE_INTS[3:9]))
        case float():
            return st.floats(0, 1e11)
        case str():
            return st.one_of(st.sampled_from(["", "seed-p", "p1", "p2", "h1", "seed", TASK,
                                              "0" * 64, "sha256:" + "0" * 64]),
                             st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True))
        case list():
            return st.one_of(st.just([]), st.just(original * 3), st.just(original[::-1]))
    return st.just(original)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a decoded JSON value that a mutation may replace."""
    if prefix:
        yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _paths(item, (*prefix, i))


def _at(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replace(value[head], rest, new)}
    return [_replace(v, rest, new) if i == head else v for i, v in enumerate(value)]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    sample = draw(st.sampled_from(SAMPLE_EVENTS))
    for _ in range(draw(st.integers(1, 3))):
        places = [p for p in _paths(sample) if p != ("type",)]
        place = draw(st.sampled_from(places))
        original = _at(sample, place)
        hostile = draw(st.integers(0, 3)) == 0  # one in four: most should reach a handler
        sample = _replace(sample, place, draw(HOSTILE if hostile else plausible(original)))
    return msgspec.json.encode(sample)


def _scheduler_state() -> bytes:
    state = core.new_state(C)
    for event in scripted_swarm():
        core.step(state, event)
    return msgspec.msgpack.encode(state)


STATE = _scheduler_state()
PEER_INPUTS = (ParentsAssigned, PeerQueued, HoldingsRelayed)
SEQ = itertools.count(1)


@pytest.fixture(scope="module")
def projections(tmp_path_factory: pytest.TempPathFactory) -> Iterator[duckdb.DuckDBPyConnection]:
    con = store.connect(tmp_path_factory.mktemp("fuzz") / "p.duckdb")
    yield con
    con.close()


def _downloader() -> Book:
    """A child in the middle of a download: shaped, with parents assigned."""
    book = Book("p1")
    decide(book, Shaped(4, held=frozenset({0})), 0.0)
    first = next(decode(msgspec.json.encode(s)) for s in SAMPLE_EVENTS
                 if s["type"] == "sched.parents_assigned.v1")
    assert isinstance(first, ParentsAssigned)
    decide(book, first, 0.0)
    return book


def outcome(raw: bytes, con: duckdb.DuckDBPyConnection) -> str:
    try:
        event = decode(raw)
    except EventDecodeError:
        return "dead-lettered"
    state = msgspec.msgpack.decode(STATE, type=core.State)
    core.step(state, event)
    for stream, items in by_stream([event]).items():
        store.apply_batch(con, stream, [(next(SEQ), e) for _, e in items])
    subject_for(event)  # where a consumer publishes what it derives
    if isinstance(event, PEER_INPUTS):  # what a child's downloader is fed
        decide(_downloader(), event, 1.0)
    return "applied"


def test_the_unmutated_samples_are_applied(projections: duckdb.DuckDBPyConnection) -> None:
    for sample in SAMPLE_EVENTS:
        assert outcome(msgspec.json.encode(sample), projections) == "applied", sample["type"]


# Derandomized: the same 600 examples every run, so CI never fails by chance; explore
# with more examples and a random seed by hand (6,000 more found nothing on 2026-12-03).
@settings(max_examples=600, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(raw=mutated())
def test_a_mutated_event_is_dead_lettered_or_applied(
        raw: bytes, projections: duckdb.DuckDBPyConnection) -> None:
    assert outcome(raw, projections) in {"dead-lettered", "applied"}


@pytest.mark.parametrize(("field", "value", "where"), [
    # issue 12's vectors: a seed writing outside its data dir, a scheduler partition and a
    # manager crash-looping on every replay
    ("task_id", "../../../../tmp/owned", "sched.seed_peer_triggered.v1"),
    ("task_id", "not-hex", "peer.registered.v1"),
    ("job_id", "job.1", "job.preheat_requested.v1"),
    ("piece_count", 2**40, "task.metadata_reported.v1"),
    ("piece_count", 3, "task.metadata_reported.v1"),  # 3 pieces of 4 MiB are not 8 MiB
    ("digest", "sha256:../x", "peer.piece_finished.v1"),
])
def test_issue_12s_poison_is_refused_with_a_one_line_reason(field: str, value: object,
                                                             where: str) -> None:
    sample = next(s for s in SAMPLE_EVENTS if s["type"] == where)
    with pytest.raises(EventDecodeError) as caught:
        decode(msgspec.json.encode({**sample, field: value}))
    assert "\n" not in str(caught.value)
    assert field in str(caught.value) or "piece_count" in str(caught.value)


"""The coordinator core when a targeted host leaves mid-job, and Dragonfly's rule that one
failed task fails the preheat at once: given events, fold them, check the decisions."""

from __future__ import annotations

from collections.abc import Sequence

from damselfly.events.base import Event
from damselfly.events.codec import AnyEvent
from damselfly.events.jobs import JobFailed, JobProgressed
from damselfly.services.manager.control.jobbook import Book
from tests.unit.test_control_core import _book, _known, _progress, _request, _start


def _fold(book: Book, events: Sequence[Event]) -> list[AnyEvent]:
    known_events = [_known(e) for e in events]
    for e in known_events:
        book.evolve(e)
    return known_events


def _all_peers_job_with_p1_running() -> tuple[Book, list[AnyEvent]]:
    book = _book()
    request = _request("all_peers", clusters=["c1"])
    log: list[AnyEvent] = [request, *_start(book, request)]
    log += _fold(book, [_progress("s1", "t", "running"), _progress("p1", "t", "running")])
    return book, log


def test_a_target_that_left_has_its_unfinished_part_failed_and_the_job_ends() -> None:
    book, _ = _all_peers_job_with_p1_running()
    assert book.unfinished() == {"j1": {"p1": ["t"], "s1": ["t"], "s2": [""]}}
    assert book.abandon({"p9": "stopped"}) == []  # not a target of any job
    (failed,) = _fold(book, book.abandon({"p1": "keepalive timeout"}))
    assert isinstance(failed, JobProgressed) and (failed.host_id, failed.task_id, failed.state,
                                                  failed.reason) == (
        "p1", "t", "failed", "host p1 left: keepalive timeout")
    assert book.abandon({"p1": "keepalive timeout"}) == []  # decided once
    (done,) = book.settle("j1")  # s1 and s2 are still at it: one failure is enough
    assert isinstance(done, JobFailed) and done.reason == "p1 t: host p1 left: keepalive timeout"


def test_a_target_that_left_before_reporting_fails_its_whole_part() -> None:
    book, _ = _all_peers_job_with_p1_running()
    (failed,) = _fold(book, book.abandon({"s2": ""}))
    assert isinstance(failed, JobProgressed) and (failed.task_id, failed.reason) == (
        "", "host s2 left")
    (done,) = book.settle("j1")
    assert isinstance(done, JobFailed) and done.reason == "s2: host s2 left"


def test_finished_parts_are_kept_when_their_host_leaves() -> None:
    book, _ = _all_peers_job_with_p1_running()
    _fold(book, [_progress("s1", "t", "succeeded")])
    assert book.abandon({"s1": "stopped"}) == [] and book.settle("j1") == []


def test_a_rebuilt_book_decides_the_same_and_publishes_nothing_new() -> None:
    book, log = _all_peers_job_with_p1_running()
    log += _fold(book, book.abandon({"p1": "keepalive timeout"}))
    (done,) = book.settle("j1")
    rebuilt = _book()
    _fold(rebuilt, log)  # the coordinator restarted before publishing JobFailed
    assert rebuilt.abandon({"p1": "keepalive timeout"}) == []
    assert [e.id for e in rebuilt.settle("j1")] == [done.id]
    _fold(rebuilt, [done])
    assert rebuilt.unfinished() == {} and rebuilt.abandon({"p1": "keepalive timeout"}) == []


def test_the_single_seed_peer_that_took_the_job_leaving_fails_it() -> None:
    book = _book()
    _start(book, _request("single_seed_peer"))
    assert book.unfinished() == {}  # no seed has taken it yet: nobody to wait for
    _fold(book, [_progress("s3", "layer-1", "succeeded"), _progress("s3", "layer-2", "running")])
    (failed,) = _fold(book, book.abandon({"s3": "stopped"}))
    assert isinstance(failed, JobProgressed) and failed.task_id == "layer-2"
    (done,) = book.settle("j1")
    assert isinstance(done, JobFailed) and done.reason == "s3 layer-2: host s3 left: stopped"

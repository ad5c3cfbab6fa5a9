"""Pure parts of the control side: cluster search by scopes, the job coordinator's core,
sealed credentials, password hashes and tokens."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from damselfly.events.admin import ClusterScopes
from damselfly.events.base import Event
from damselfly.events.codec import AnyEvent
from damselfly.events.jobs import (
    GetTaskRequested,
    HostJobState,
    JobFailed,
    JobProgressed,
    JobStarted,
    JobSucceeded,
    PreheatRequested,
    PreheatScope,
    SyncPeersRequested,
)
from damselfly.events.secrets import SealError, open_sealed, seal
from damselfly.services.manager.control import jobbook
from damselfly.services.manager.control.auth import AuthError, new_token, parse_token, token_hash
from damselfly.services.manager.control.jobbook import Book, Host
from damselfly.services.manager.control.passwords import hash_password, verify_password
from damselfly.services.manager.control.scopes import (
    Candidate,
    HostFacts,
    find_cluster,
    valid_scopes,
)
from damselfly.services.peer.jobs import choose_manifest

HZ = Candidate("hz", ClusterScopes(cidrs=["10.1.0.0/16"], idc=["idc-hz"], location=["cn|hz"],
                                   hostnames=[r"hz-\d+"]))
SH = Candidate("sh", ClusterScopes(idc=["idc-sh"], location=["cn|sh"]))
FALLBACK = Candidate("fallback", ClusterScopes(), is_default=True)


@pytest.mark.parametrize(("host", "cluster"), [
    (HostFacts(ip="10.1.9.9"), "hz"),
    (HostFacts(hostname="hz-12"), "hz"),
    (HostFacts(hostname="hz-twelve"), "fallback"),
    (HostFacts(idc="idc-sh"), "sh"),
    (HostFacts(location="cn|sh|pudong"), "sh"),
    (HostFacts(location="cn"), "fallback"),  # a shorter location is not inside the scope
    (HostFacts(ip="10.1.0.1", idc="idc-sh"), "hz"),  # CIDR weighs more than IDC
    (HostFacts(ip="not-an-ip"), "fallback"),
])
def test_a_host_finds_its_cluster_by_scope(host: HostFacts, cluster: str) -> None:
    assert find_cluster([SH, FALLBACK, HZ], host) == cluster


def test_no_match_and_no_default_finds_nothing() -> None:
    assert find_cluster([HZ, SH], HostFacts(ip="192.168.1.1")) is None


def test_bad_scopes_are_named() -> None:
    problems = valid_scopes(ClusterScopes(cidrs=["10.0.0.0/8", "300.1.1.1/8"],
                                          hostnames=["ok-.*", "(unclosed"]))
    assert len(problems) == 2
    assert "300.1.1.1/8" in problems[0] and "(unclosed" in problems[1]


def _book() -> Book:
    return Book(preheat_timeout=100.0, collect_window=5.0)


def _request(scope: PreheatScope, job: str = "j1",
             clusters: list[str] | None = None) -> PreheatRequested:
    return PreheatRequested(id=f"req-{job}", at=1000.0, job_id=job, url="http://o/f",
                            scope=scope, scheduler_cluster_ids=clusters or [])


HOSTS = [Host("s1", "c1", True), Host("s2", "c1", True), Host("p1", "c1", False),
         Host("s3", "c2", True)]


def _progress(host: str, task: str, state: HostJobState, reason: str = "") -> JobProgressed:
    return JobProgressed(id=f"{host}-{task}-{state}", job_id="j1", host_id=host, task_id=task,
                         state=state, reason=reason)


def _known(event: Event) -> AnyEvent:
    """A decision as the catalogue types it (the book returns it typed as ``Event``)."""
    assert isinstance(event, AnyEvent), event
    return event


def _start(book: Book, request: PreheatRequested | GetTaskRequested | SyncPeersRequested
           ) -> list[AnyEvent]:
    book.evolve(request)
    (job,) = book.unstarted()
    out = [_known(e) for e in book.start(job, HOSTS, now=1000.0)]
    for e in out:
        book.evolve(e)
    return out


def test_all_seed_peers_targets_the_live_seeds_of_the_clusters_and_waits_for_each() -> None:
    book = _book()
    (started,) = _start(book, _request("all_seed_peers", clusters=["c1"]))
    assert isinstance(started, JobStarted) and started.host_ids == ["s1", "s2"]
    book.evolve(_progress("s1", "t", "running"))
    book.evolve(_progress("s1", "t", "succeeded"))
    assert book.settle("j1") == []  # s2 has not reported
    book.evolve(_progress("s2", "t", "succeeded"))
    (done,) = book.settle("j1")
    assert isinstance(done, JobSucceeded) and done.result == {"hosts": "s1,s2", "tasks": "t"}
    assert done.id == book.settle("j1")[0].id  # derived: a replay republishes the same event


def test_one_failed_host_fails_the_job_with_its_reason() -> None:
    book = _book()
    _start(book, _request("all_peers", clusters=["c1"]))
    for host in ("s1", "s2"):
        book.evolve(_progress(host, "t", "succeeded"))
    book.evolve(_progress("p1", "t", "failed", "origin answered 404"))
    (done,) = book.settle("j1")
    assert isinstance(done, JobFailed) and done.reason == "p1 t: origin answered 404"


def test_single_seed_peer_ends_with_the_first_host_that_finished_every_task() -> None:
    book = _book()
    (started,) = _start(book, _request("single_seed_peer"))
    assert isinstance(started, JobStarted) and started.host_ids == []
    book.evolve(_progress("s3", "layer-1", "running"))
    book.evolve(_progress("s3", "layer-2", "running"))
    book.evolve(_progress("s3", "layer-1", "succeeded"))
    assert book.settle("j1") == []
    book.evolve(_progress("s3", "layer-2", "succeeded"))
    (done,) = book.settle("j1")
    assert isinstance(done, JobSucceeded) and done.result["tasks"] == "layer-1,layer-2"


def test_no_seed_peer_alive_fails_the_job_after_the_grace_period() -> None:
    book = _book()
    assert _start(book, _request("all_seed_peers", clusters=["c9"])) == []
    (job,) = book.unstarted()
    assert book.start(job, HOSTS, now=1009.0) == []  # hosts may not be projected yet
    (failed,) = book.start(job, HOSTS, now=1010.0)
    assert isinstance(failed, JobFailed) and failed.reason == "no seed peer alive in c9"


def test_a_preheat_past_its_deadline_fails_naming_who_did_not_answer() -> None:
    book = _book()
    _start(book, _request("all_seed_peers", clusters=["c1"]))
    book.evolve(_progress("s1", "t", "succeeded"))
    assert book.expire(1099.0) == []
    (failed,) = book.expire(1100.0)
    assert isinstance(failed, JobFailed) and failed.reason == "timed out waiting for s2"


def test_get_task_reports_the_holders_it_heard_from_when_the_window_closes() -> None:
    book = _book()
    request = GetTaskRequested(id="req-g", at=1000.0, job_id="j1", task_id="t")
    _start(book, request)
    book.evolve(_progress("s1", "t", "succeeded", "held"))
    assert book.expire(1004.0) == []
    (done,) = book.expire(1005.0)
    assert isinstance(done, JobSucceeded) and done.result == {"s1": "held"}


def test_sync_peers_counts_the_hosts_and_tasks_it_heard_of_when_the_window_closes() -> None:
    book = _book()
    _start(book, SyncPeersRequested(id="req-s", at=1000.0, job_id="j1"))
    for host, task in (("s1", "t1"), ("s1", "t2"), ("s2", "t1")):
        book.evolve(_progress(host, task, "succeeded", "held"))
    assert book.expire(1004.0) == []
    (done,) = book.expire(1005.0)
    assert isinstance(done, JobSucceeded) and done.result == {"hosts": "2", "tasks": "2"}


def test_a_finished_job_is_never_reopened_by_a_replayed_request() -> None:
    book = _book()
    request = _request("all_seed_peers", clusters=["c1"])
    book.evolve(request)
    book.evolve(JobFailed(id="f", job_id="j1", reason="x"))
    book.evolve(request)
    assert book.unstarted() == [] and book.expire(10_000.0) == []


def test_the_coordinator_core_is_pure() -> None:
    tree = ast.parse(Path(jobbook.__file__).read_text())
    imported = {(n.module or "").removeprefix("damselfly.").split(".")[0]
                for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name.removeprefix("damselfly.").split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.Import) for a in n.names}
    assert imported <= {"__future__", "collections", "dataclasses", "typing", "events"}


def test_sealed_credentials_open_only_with_the_same_secret() -> None:
    value = {"username": "u", "password": "p4ss", "headers": {"Authorization": "Bearer t"}}
    sealed = seal("s1", value)
    assert "p4ss" not in sealed and "Bearer" not in sealed
    assert open_sealed("s1", sealed) == value
    assert seal("s1", value) != sealed  # a fresh nonce each time
    with pytest.raises(SealError, match="cannot be opened"):
        open_sealed("s2", sealed)
    with pytest.raises(SealError, match="cannot be opened"):
        open_sealed("s1", sealed[:-4] + "AAAA")
    assert seal("s1", {}) == "" and open_sealed("s1", "") == {}


def test_passwords_are_salted_slow_hashes() -> None:
    first, second = hash_password("correct horse"), hash_password("correct horse")
    assert first != second and "correct" not in first and first.startswith("scrypt$")
    assert verify_password("correct horse", first)
    assert not verify_password("wrong horse", first)
    assert not verify_password("correct horse", "md5$abc")


def test_tokens_keep_only_a_hash_and_say_their_kind() -> None:
    token_id, token, digest = new_token("personal")
    parsed_id, secret = parse_token(token)
    assert token.startswith("dfp_") and new_token("session")[1].startswith("dfs_")
    assert parsed_id == token_id and token_hash(secret) == digest and secret not in digest
    for bad in ("dfp_short", "Basic abc", "dfx_0123456789ab_secret"):
        with pytest.raises(AuthError):
            parse_token(bad)


INDEX = {"manifests": [
    {"digest": "sha256:amd", "platform": {"os": "linux", "architecture": "amd64"}},
    {"digest": "sha256:arm7", "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
    {"digest": "sha256:arm64", "platform": {"os": "linux", "architecture": "arm64"}},
]}


@pytest.mark.parametrize(("platform", "digest"), [
    ("", "sha256:amd"), ("linux/arm64", "sha256:arm64"), ("linux/arm/v7", "sha256:arm7"),
    ("linux/arm", "sha256:arm7")])
def test_an_image_index_resolves_by_platform(platform: str, digest: str) -> None:
    assert choose_manifest(INDEX, platform) == digest


def test_a_missing_platform_names_the_ones_there_are() -> None:
    with pytest.raises(ValueError, match=r"windows/amd64 \(the index has linux/amd64, "
                                         r"linux/arm/v7, linux/arm64\)"):
        choose_manifest(INDEX, "windows/amd64")

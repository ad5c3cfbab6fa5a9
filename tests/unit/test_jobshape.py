"""Jobs in Dragonfly's shape, as Harbor decodes them."""

from __future__ import annotations

import datetime as dt

from damselfly.services.manager.jobshape import dragonfly_job, job_number, job_prefix, rfc3339

JOB_ID = "0123456789abcdef0123456789abcdef"


def test_a_job_has_a_52_bit_integer_id_that_finds_it_again() -> None:
    number = job_number(JOB_ID)
    assert number == 0x0123456789abc and number < 2 ** 53
    assert job_prefix(str(number)) == JOB_ID[:13]
    assert job_prefix(JOB_ID) is None  # a hex id is looked up as itself
    assert job_prefix("9" * 32) is None  # even one made of decimal digits only
    assert job_prefix(str(16 ** 13)) is None
    assert 0 <= job_number("preheat-from-ci-42") < 16 ** 13  # an id an outside system chose
    assert job_number("preheat-from-ci-42") == job_number("preheat-from-ci-42")


def test_times_are_rfc3339_in_utc() -> None:
    assert rfc3339(dt.datetime(2026, 12, 2, 3, 4, 5, 600000)) == "2026-12-02T03:04:05.600000Z"
    assert rfc3339(None) is None


def test_states_and_results_in_harbors_vocabulary() -> None:
    job: dict[str, object] = {
        "job_id": JOB_ID, "kind": "preheat", "state": "failed", "reason": "no manifest",
        "clusters": ["a"], "requested_at": dt.datetime(2026, 1, 1), "updated_at": None}
    hosts: list[dict[str, object]] = [
             {"host_id": "h1", "task_id": "t1", "state": "succeeded", "hostname": "n1",
              "ip": "10.0.0.1"},
             {"host_id": "h2", "task_id": "t1", "state": "failed", "reason": "disk full",
              "hostname": "n2", "ip": "10.0.0.2"},
             {"host_id": "h3", "task_id": "t1", "state": "running", "hostname": None, "ip": None}]
    out = dragonfly_job(job, hosts, {"t1": "http://r/v2/a/blobs/sha256:1"})
    assert out["id"] == job_number(JOB_ID) and out["state"] == "FAILURE"
    assert out["created_at"] == "2026-01-01T00:00:00Z" and out["updated_at"] is None
    result = out["result"]
    assert isinstance(result, dict)
    (state,) = result["job_states"]
    assert state["error"] == "no manifest"
    (r,) = state["results"]
    assert [t["hostname"] for t in r["success_tasks"]] == ["n1"]
    assert r["failure_tasks"][0]["description"] == "disk full"
    assert r["success_tasks"][0]["url"] == "http://r/v2/a/blobs/sha256:1"
    for given, want in (("pending", "PENDING"), ("running", "PENDING"),
                        ("succeeded", "SUCCESS")):
        assert dragonfly_job({**job, "state": given}, [], {})["state"] == want

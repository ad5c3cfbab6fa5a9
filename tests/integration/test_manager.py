"""The manager as a user runs it: a real process on a real nats-server, its REST API, the
``sql``/``dashboards`` commands against it and against its file, and a clean SIGTERM."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from damselfly.events.bus import Publisher
from damselfly.events.streams import LEASE_BUCKET, MEMBER_BUCKET, ensure_streams
from damselfly.events.tasks import PieceFinished
from damselfly.projections import PROJECTIONS
from damselfly.services.runtime.natsconn import connect
from damselfly.services.runtime.procs import DAMSELFLY, spawn, stop, wait_ready
from damselfly.services.scheduler.lease import Leases, Members, lease_key, open_bucket
from tests.support.metrics import samples, scrape
from tests.support.synthetic import Swarm, events
from tests.support.wait import eventually_sync

SWARM = Swarm(cluster="m1", tasks=2, peers_per_task=3, pieces=4)
ROOT_PASSWORD = "root-password-for-manager-tests"
ROOT_ENV = {"DAMSELFLY_ROOT_PASSWORD": ROOT_PASSWORD}
WAIT = 30.0  # seconds a manager process may take to project what a test published


def publish(url: str, swarm: Swarm) -> None:
    async def main() -> None:
        nc = await connect(url, "test-manager")
        try:
            js = nc.jetstream()
            await ensure_streams(js)
            await Publisher(js).publish_many(list(events(swarm)))
        finally:
            await nc.drain()
    asyncio.run(main())


def get(url: str, token: str = "") -> Any:
    """The JSON body (its shape is what the tests assert)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as resp:
        return json.loads(resp.read())


def post(url: str, body: object, token: str = "") -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, json.dumps(body).encode(), method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def sign_in(url: str) -> str:
    """A root session on the manager at ``url``, once its projections know root."""
    def token() -> str:
        status, body = post(url + "/api/v1/users/signin", {"name": "root",
                                                           "password": ROOT_PASSWORD})
        return str(body["token"]) if status == 200 else ""
    return eventually_sync(token, timeout=WAIT)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DAMSELFLY, *args], check=False,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "DAMSELFLY_PASSWORD": ROOT_PASSWORD})


@pytest.fixture(scope="module")
def manager(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    data = tmp_path_factory.mktemp("manager")
    publish(nats_url, SWARM)
    with open(data / "manager.log", "wb") as log:
        proc = spawn([*DAMSELFLY, "manager", "--nats", nats_url,
                      "--data-dir", str(data), "--ready-file", str(data / "ready.json")], log,
                     ROOT_ENV)
    try:
        ready = wait_ready(data / "ready.json", proc)
        endpoints = {"url": str(ready["url"]), "db": str(ready["db"]), "dir": str(data)}
        endpoints["token"] = token = sign_in(endpoints["url"])
        # every stream is projected on its own: wait for the last fact of each
        everything = {"seed_peers": 1, "hosts": SWARM.peers_per_task, "active_peers": 0,
                      "peers": SWARM.tasks * (SWARM.peers_per_task + 1), "tasks": SWARM.tasks,
                      "decisions": SWARM.tasks * (SWARM.peers_per_task + 2), "schedulers": 0}
        def projected() -> bool:
            seen = get(endpoints["url"] + "/api/v1/overview", token)
            return seen["totals"] == everything and seen["jobs"] == [
                {"state": "succeeded", "jobs": 2}]  # a preheat and a sync_peers census

        eventually_sync(projected, timeout=WAIT)
        yield endpoints
    finally:
        stop([proc])
    assert proc.returncode == 0, (data / "manager.log").read_text()[-2000:]


def test_ready_file_names_a_loopback_url_and_the_db(manager: dict[str, str]) -> None:
    assert manager["url"].startswith("http://127.0.0.1:")
    assert manager["db"] == str(Path(manager["dir"]) / "damselfly.duckdb")
    assert get(manager["url"] + "/healthz") == {"status": "ok"}
    assert get(manager["url"] + "/healthy") == {"status": "ok"}  # Dragonfly's, Harbor probes it
    paths = get(manager["url"] + "/openapi.json")["paths"]
    assert {"/api/v1/overview", "/api/v1/sql", "/api/v1/dashboards/{name}"} <= set(paths)


def test_overview_tasks_and_drill_down(manager: dict[str, str]) -> None:
    url = manager["url"] + "/api/v1"
    read = functools.partial(get, token=manager["token"])
    (cluster,) = read(url + "/overview")["clusters"]
    assert cluster["cluster"] == "m1"
    assert (cluster["seed_peers"], cluster["hosts"], cluster["tasks"]) == (
        1, SWARM.peers_per_task, SWARM.tasks)
    found = read(url + "/tasks?q=files/1.bin")
    assert [t["url"] for t in found] == ["http://origin.example/files/1.bin"]
    task = read(url + "/tasks/" + found[0]["task_id"])
    assert len(task["peers"]) == SWARM.peers_per_task + 1
    assert {d["kind"] for d in task["decisions"]} == {"seed_triggered", "back_to_source",
                                                      "parents_assigned"}
    peer = read(url + f"/tasks/{found[0]['task_id']}/peers/m1-host1-t1")
    assert peer["peer"]["bytes_from_peers"] == SWARM.pieces * SWARM.piece_length
    assert sum(m["pieces_from_peers"] for m in peer["pieces_per_minute"]) == SWARM.pieces
    with pytest.raises(urllib.error.HTTPError) as missing:
        read(url + "/tasks/nope")
    assert missing.value.code == 404
    assert [p["peer_id"] for p in read(url + "/peers?q=host1-t1")] == ["m1-host1-t1"]
    assert read(url + "/peers?q=%25") == []  # a literal "%", not a wildcard
    assert len(read(url + "/peers?state=failed")) == SWARM.tasks
    (job,) = read(url + "/jobs?type=preheat")
    assert read(url + "/jobs/" + job["job_id"])["hosts"][0]["state"] == "succeeded"
    (census,) = read(url + "/jobs?type=sync_peers")
    assert {h["task_id"] for h in read(url + "/jobs/" + census["job_id"])["hosts"]} == {
        t["task_id"] for t in read(url + "/tasks")}


def test_sql_endpoint_runs_selects_and_refuses_writes(manager: dict[str, str]) -> None:
    send = functools.partial(post, token=manager["token"])
    status, body = send(manager["url"] + "/api/v1/sql", {"sql": "SELECT count(*) AS n FROM hosts"})
    assert (status, body) == (200, {"columns": ["n"], "rows": [[SWARM.peers_per_task + 1]],
                                    "truncated": False})
    status, body = send(manager["url"] + "/api/v1/sql",
                        {"sql": "SELECT * FROM range(10)", "max_rows": 3})
    assert (status, body["rows"], body["truncated"]) == (200, [[0], [1], [2]], True)
    status, body = send(manager["url"] + "/api/v1/sql", {"sql": "DELETE FROM hosts"})
    assert status == 400 and "only one SELECT" in body["detail"]
    status, body = send(manager["url"] + "/api/v1/sql", {"sql": "SELECT * FROM nowhere"})
    assert status == 400 and "nowhere" in body["detail"]
    status, body = send(manager["url"] + "/api/v1/sql",
                        {"sql": "SELECT * FROM read_text('/etc/hostname')"})
    assert status == 400 and "disabled by configuration" in body["detail"]


def test_cli_reaches_the_live_manager(manager: dict[str, str]) -> None:
    done = cli("sql", "SELECT state, count(*) AS n FROM peers GROUP BY state ORDER BY state",
               "--manager", manager["url"], "--format", "json", "--user", "root")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [
        {"state": "failed", "n": SWARM.tasks},
        {"state": "succeeded", "n": SWARM.tasks * SWARM.peers_per_task}]
    done = cli("dashboards", "run", "top_tasks", "--manager", manager["url"], "--format", "csv",
               "--token", manager["token"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "task,peers,succeeded_peers,failed_peers"
    assert len(done.stdout.splitlines()) == 1 + SWARM.tasks
    done = cli("sql", "SELECT 1", "--db", manager["db"])
    assert done.returncode == 1 and "held by a running manager" in done.stderr
    done = cli("dashboards", "run", "nope", "--manager", manager["url"], "--user", "root")
    assert done.returncode == 1 and "no dashboard panel 'nope'" in done.stderr


def test_every_panel_is_served_with_rows(manager: dict[str, str]) -> None:
    read = functools.partial(get, token=manager["token"])
    panels = read(manager["url"] + "/api/v1/dashboards")
    for panel in panels:
        body = read(manager["url"] + "/api/v1/dashboards/" + panel["name"])
        assert body["rows"] and body["chart"] == panel["chart"], panel["name"]


def test_projections_report_their_lag(manager: dict[str, str]) -> None:
    marks = get(manager["url"] + "/api/v1/projections", manager["token"])
    assert {m["projection"] for m in marks} == {p.name for p in PROJECTIONS}
    assert all(m["lag"] == 0 and m["last_seq"] == m["stream_last_seq"] for m in marks), marks


def test_metrics_say_what_each_stream_projected(manager: dict[str, str]) -> None:
    scraped = samples(scrape(manager["url"] + "/metrics"))
    streams = {dict(labels)["stream"] for name, labels in scraped
               if name == "damselfly_manager_events_projected_total"}
    assert {"DF_TASKS", "DF_HOSTS", "DF_SCHED", "DF_JOBS"} <= streams
    tasks = (("stream", "DF_TASKS"),)
    assert scraped[("damselfly_manager_events_projected_total", tasks)] > 0
    assert scraped[("damselfly_manager_events_dead_lettered_total", tasks)] == 0
    assert scraped[("damselfly_manager_consumer_lag", tasks)] == 0


def test_live_rebuild_through_the_cli_restores_the_rows(manager: dict[str, str]) -> None:
    query = "SELECT * FROM peers ORDER BY task_id, peer_id"
    send = functools.partial(post, token=manager["token"])
    _, before = send(manager["url"] + "/api/v1/sql", {"sql": query})
    done = cli("projections", "rebuild", "peers", "--manager", manager["url"], "--user", "root")
    assert done.returncode == 0, done.stderr
    assert "rebuilding peers" in done.stdout
    eventually_sync(lambda: send(manager["url"] + "/api/v1/sql", {"sql": query})[1] == before,
                    timeout=WAIT)


def test_after_sigterm_the_file_opens_directly(nats_url: str, tmp_path: Path) -> None:
    swarm = Swarm(cluster="m2", tasks=1, peers_per_task=2, pieces=2)
    publish(nats_url, swarm)
    with open(tmp_path / "manager.log", "wb") as log:
        proc = spawn([*DAMSELFLY, "manager", "--nats", nats_url,
                      "--data-dir", str(tmp_path), "--ready-file", str(tmp_path / "r.json")], log,
                     ROOT_ENV)
    try:
        url = str(wait_ready(tmp_path / "r.json", proc)["url"])
        token = sign_in(url)
        eventually_sync(lambda: get(url + "/api/v1/overview", token)["totals"]["tasks"] >= 1,
                        timeout=WAIT)
    finally:
        stop([proc])
    assert proc.returncode == 0
    done = cli("sql", "SELECT count(*) AS n FROM tasks WHERE cluster = 'm2'", "--db",
               str(tmp_path / "damselfly.duckdb"), "--format", "csv")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["n", "1"]
    (tmp_path / "cluster.json").write_text(json.dumps({"services": {"manager": {"url": url}}}))
    (tmp_path / "manager").mkdir()
    (tmp_path / "damselfly.duckdb").rename(tmp_path / "manager" / "damselfly.duckdb")
    done = cli("dashboards", "run", "top_tasks", "--data-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "http://origin.example/files/0.bin" in done.stdout


def test_overview_lists_schedulers_by_their_leases(manager: dict[str, str], nats_url: str) -> None:
    async def hold() -> None:
        nc = await connect(nats_url, "test-scheduler-leases")
        try:
            js = nc.jetstream()
            leases = Leases(await open_bucket(js, LEASE_BUCKET, ttl=60), "sched-a")
            for part in (3, 1):
                assert await leases.take(lease_key("m1", part)) is not None
            for name in ("sched-a", "sched-b"):  # b is alive but owns nothing yet
                await Members(await open_bucket(js, MEMBER_BUCKET, ttl=60), "m1",
                              name).heartbeat()
        finally:
            await nc.drain()
    asyncio.run(hold())
    overview = get(manager["url"] + "/api/v1/overview", manager["token"])
    assert overview["schedulers"] == [
        {"cluster": "m1", "scheduler": "sched-a", "partitions": [1, 3]},
        {"cluster": "m1", "scheduler": "sched-b", "partitions": []}]
    assert overview["totals"]["schedulers"] == 2


def test_a_killed_manager_resumes_without_counting_twice(nats_url: str, tmp_path: Path) -> None:
    before = Swarm(cluster="k1", tasks=3, peers_per_task=6, pieces=20)
    after = Swarm(cluster="k2", tasks=2, peers_per_task=5, pieces=30)
    argv = [*DAMSELFLY, "manager", "--nats", nats_url,
            "--data-dir", str(tmp_path), "--ready-file", str(tmp_path / "r.json")]
    query = ("SELECT count(*), sum(pieces), sum(bytes_from_peers) FROM peers "
             "WHERE cluster IN ('k1', 'k2')")

    def totals(url: str, token: str) -> list[object]:
        return post(url + "/api/v1/sql", {"sql": query}, token)[1]["rows"][0]

    def expected(*swarms: Swarm) -> list[object]:
        log = [e for s in swarms for e in events(s)]
        finished = [e for e in log if isinstance(e, PieceFinished)]
        return [sum(s.tasks * (s.peers_per_task + 1) for s in swarms), len(finished),
                sum(e.length for e in finished if e.parent_id)]

    publish(nats_url, before)
    with open(tmp_path / "first.log", "wb") as out:
        first = spawn(argv, out, ROOT_ENV)
    try:
        url = str(wait_ready(tmp_path / "r.json", first)["url"])
        token = sign_in(url)
        eventually_sync(lambda: totals(url, token) == expected(before), timeout=WAIT)
    finally:
        first.kill()  # no goodbye, no clean shutdown
        first.wait()
    publish(nats_url, after)
    (tmp_path / "r.json").unlink()
    with open(tmp_path / "second.log", "wb") as out:
        second = spawn(argv, out, ROOT_ENV)
    try:
        url = str(wait_ready(tmp_path / "r.json", second)["url"])
        token = sign_in(url)
        eventually_sync(lambda: totals(url, token) == expected(before, after), timeout=WAIT)
    finally:
        stop([second])
    assert second.returncode == 0
    log = (tmp_path / "second.log").read_text()
    assert "projecting DF_TASKS from sequence 1\n" not in log  # it resumed, not replayed


def test_a_second_manager_on_the_same_file_is_refused(manager: dict[str, str],
                                                       nats_url: str) -> None:
    done = cli("manager", "--nats", nats_url, "--data-dir", manager["dir"])
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("damselfly manager: IO Error: Could not set lock on file")


def test_the_api_docs_work_offline(manager: dict[str, str]) -> None:
    import urllib.request

    with urllib.request.urlopen(manager["url"] + "/docs", timeout=10) as page:
        html = page.read().decode()
    assert "/openapi.json" in html and "cdn" not in html.lower()
    with urllib.request.urlopen(manager["url"] + "/swagger/swagger-ui-bundle.js",
                                timeout=10) as js:
        assert b"SwaggerUIBundle" in js.read()

"""The control API against a real nats-server and DuckDB file: sign-in and roles, clusters
with scopes and config, cluster search over NATS, tokens, tenants, jobs' bad input, sealed
credentials and the audit trail."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client

from damselfly.events.bus import Publisher
from damselfly.events.clustersearch import ClusterQuery, ask_cluster
from damselfly.events.codec import decode
from damselfly.events.config import ClusterConfigSet
from damselfly.events.hosts import HostAnnounced, HostKeepalive
from damselfly.events.ids import new_id
from damselfly.events.tasks import PeerRegistered
from damselfly.services.manager.control.users import ensure_root
from tests.support.control import ROOT_PASSWORD, Manager, running_manager
from tests.support.wait import eventually

pytestmark = pytest.mark.anyio


async def _stream_bytes(nc: Client, stream: str) -> bytes:
    js = nc.jetstream()
    info = await js.stream_info(stream)
    out = b""
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        out += (await js.get_msg(stream, seq)).data or b""
    return out


async def test_root_signs_in_guests_only_read(nats_url: str, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_manager(nats_url, tmp_path, monkeypatch) as m:
        status, body = await m.call("GET", "/api/v1/roles")
        assert status == 401 and "sign in" in body["detail"]
        status, body = await m.call("POST", "/api/v1/users/signin",
                                    {"name": "root", "password": "wrong-password"})
        assert (status, body["detail"]) == (401, "wrong user name or password")
        root = await eventually(lambda: m.try_sign_in("root", ROOT_PASSWORD))
        assert await ensure_root(m.nc.jetstream()) is False  # the log has one already
        status, body = await m.call("POST", "/api/v1/users", {"name": "gina", "password":
                                    "guest-password", "role": "guest"}, root)
        assert status == 201 and "password" not in str(body)
        guest = await eventually(lambda: m.try_sign_in("gina", "guest-password"))
        status, roles = await m.call("GET", "/api/v1/roles", token=guest)
        assert status == 200 and {r["role"] for r in roles} == {"root", "guest"}
        status, body = await m.call("POST", "/api/v1/scheduler-clusters", {"id": "nope"}, guest)
        assert status == 403 and "may only read" in body["detail"]
        status, _ = await m.call("GET", "/api/v1/scheduler-clusters", token=guest)
        assert status == 200
        status, _ = await m.call("GET", "/api/v1/overview", token=guest)
        assert status == 200
        status, body = await m.call("POST", "/api/v1/sql", {"sql": "SELECT 1"}, guest)
        assert status == 403 and "only root may run SQL" in body["detail"]
        status, body = await m.call("POST", "/api/v1/projections/rebuild", {}, guest)
        assert status == 403 and "only root may rebuild" in body["detail"]
        status, body = await m.call("GET", "/api/v1/users", token=root)
        users = {u["user_id"]: u for u in body}
        assert users["gina"]["role"] == "guest" and "password_hash" not in users["gina"]
        status, body = await m.call("PATCH", "/api/v1/users/root", {"state": "disabled"}, root)
        assert status == 409 and "stays enabled" in body["detail"]
        status, body = await m.call("PATCH", "/api/v1/users/gina", {"state": "disabled"}, guest)
        assert status == 403
        status, body = await m.call("PUT", "/api/v1/users/gina/roles/root", token=root)
        assert status == 200 and body["role"] == "root"
        audit = await eventually(lambda: _audit(m, root, "user.role"))
        assert audit[0]["actor"] == "root" and audit[0]["target"] == "gina"
        assert audit[0]["method"] == "PUT" and audit[0]["path"] == "/api/v1/users/gina/roles/root"
        signins = await _audit(m, root, "token.session")
        assert {"root", "gina"} <= {a["actor"] for a in signins}
        # A new password ends the user's other sessions and a sign-out its own, both from
        # the very next request on: the check reads the log, not a projection that may lag.
        other = await m.try_sign_in("gina", "guest-password")
        status, _ = await m.call("PATCH", "/api/v1/users/gina", {"password": "new-password"},
                                 guest)
        assert status == 200
        status, body = await m.call("GET", "/api/v1/roles", token=other)
        assert (status, body["detail"]) == (401, "session revoked")
        assert await m.try_sign_in("gina", "guest-password") == ""
        assert await m.try_sign_in("gina", "new-password")
        status, _ = await m.call("GET", "/api/v1/roles", token=guest)
        assert status == 200  # the session that changed the password goes on
        status, _ = await m.call("POST", "/api/v1/users/signout", token=guest)
        assert status == 200
        status, body = await m.call("GET", "/api/v1/roles", token=guest)
        assert (status, body["detail"]) == (401, "session revoked")
        status, body = await m.call("GET", "/api/v1/users", token="dfs_forged.token")
        assert status == 401
        status, body = await m.call("GET", "/api/v1/users", token="dfs_a.b.c>d e*f_secret")
        assert status == 401  # an id that is no subject token is unknown, not a 500
        status, body = await m.call("POST", "/api/v1/users/signin",
                                    {"name": "a.b>c", "password": "x"})
        assert (status, body["detail"]) == (401, "wrong user name or password")
        status, openapi = await m.call("GET", "/openapi.json")
        assert {"/api/v1/scheduler-clusters", "/api/v1/seed-peer-clusters", "/api/v1/jobs",
                "/oapi/v1/jobs", "/api/v1/users/signin", "/api/v1/personal-access-tokens",
                "/api/v1/applications", "/api/v1/audit"} <= set(openapi["paths"])


async def _audit(m: Manager, token: str, action: str) -> list[dict[str, Any]]:
    _, rows = await m.call("GET", f"/api/v1/audit?action={action}", token=token)
    return rows


async def test_clusters_scopes_config_and_search(nats_url: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_manager(nats_url, tmp_path, monkeypatch) as m:
        root = await eventually(lambda: m.try_sign_in("root", ROOT_PASSWORD))
        body = {"id": "hz", "name": "Hangzhou", "scopes": {"cidrs": ["10.1.0.0/16"],
                "idc": ["idc-hz"], "location": ["cn|hz"], "hostnames": ["^hz-.*"]},
                "config": {"candidate_parent_limit": 5, "back_to_source_limit": 1,
                           "weights": {"idc": 0.5}}}
        status, created = await m.call("POST", "/api/v1/scheduler-clusters", body, root)
        assert status == 201, created
        assert created["config"]["candidate_parent_limit"] == 5
        status, _ = await m.call("POST", "/api/v1/scheduler-clusters",
                                 {"id": "fallback", "is_default": True}, root)
        assert status == 201
        status, again = await m.call("POST", "/api/v1/scheduler-clusters", {"id": "hz"}, root)
        assert status == 409 and "exists" in again["detail"]
        status, bad = await m.call("POST", "/api/v1/scheduler-clusters", {"id": "x", "scopes":
                                   {"cidrs": ["10.0.0.0/33"]}}, root)
        assert status == 422 and "not a CIDR" in bad["detail"]
        status, bad = await m.call("POST", "/api/v1/scheduler-clusters",
                                   {"id": "y", "config": {"weights": {"speed": 1}}}, root)
        assert status == 422 and "unknown evaluator weights speed" in bad["detail"]

        # The schedulers read the config from DF_CONFIG.
        js = m.nc.jetstream()
        msg = await js.get_last_msg("DF_CONFIG", "df.config.cluster.hz")
        assert msg.data is not None
        config = decode(msg.data)
        assert isinstance(config, ClusterConfigSet)
        assert (config.config.candidate_parent_limit, config.config.back_to_source_limit,
                config.config.weights) == (5, 1, {"idc": 0.5})

        stored = await eventually(lambda: _get(m, "/api/v1/scheduler-clusters/hz", root))
        assert stored["cidrs"] == ["10.1.0.0/16"] and stored["config"]["retry_limit"] == 5
        # Dragonfly's clients name a cluster by an integer: ``number``, in paths and jobs.
        assert isinstance(created["number"], int) and created["number"] == stored["number"]
        by_number = await _get(m, f"/api/v1/scheduler-clusters/{created['number']}", root)
        assert by_number["cluster"] == "hz"
        status, job = await m.call("POST", "/oapi/v1/jobs", {
            "type": "preheat", "args": {"type": "file", "url": "http://o/f"},
            "scheduler_cluster_ids": [created["number"]]}, root)
        assert status == 201 and job["scheduler_cluster_ids"] == ["hz"], job
        status, unknown = await m.call("POST", "/oapi/v1/jobs", {
            "type": "preheat", "args": {"type": "file", "url": "http://o/f"},
            "scheduler_cluster_ids": [12345]}, root)
        assert status == 404 and unknown["detail"] == "unknown scheduler clusters: 12345"
        status, patched = await m.call("PATCH", "/api/v1/scheduler-clusters/hz",
                                       {"config": {"filter_parent_limit": 40}}, root)
        assert status == 200 and patched["config"]["candidate_parent_limit"] == 5
        assert patched["config"]["filter_parent_limit"] == 40
        assert patched["scopes"]["cidrs"] == ["10.1.0.0/16"]  # untouched fields kept

        async def search(**facts: str) -> str:
            return (await ask_cluster(m.nc, ClusterQuery(**facts))).cluster

        assert await eventually(lambda: _equals(search(ip="10.1.2.3"), "hz")) == "hz"
        assert await search(hostname="hz-node-7") == "hz"
        assert await search(location="cn|hz|xihu") == "hz"
        assert await search(ip="192.168.0.9", hostname="bj-1") == "fallback"

        status, _ = await m.call("DELETE", "/api/v1/scheduler-clusters/hz", token=root)
        assert status == 200
        assert await eventually(lambda: _equals(search(ip="10.1.2.3"), "fallback"))
        status, missing = await m.call("GET", "/api/v1/scheduler-clusters/hz", token=root)
        assert status == 404 and missing["detail"] == "no scheduler cluster hz"

        status, body = await m.call("PATCH", "/api/v1/scheduler-clusters/fallback",
                                    {"seed_peer_cluster_ids": ["hz-seeds"]}, root)
        assert status == 404 and body["detail"] == "unknown seed-peer clusters: hz-seeds"
        status, seeds = await m.call("POST", "/api/v1/seed-peer-clusters",
                                     {"id": "hz-seeds", "load_limit": 300}, root)
        assert status == 201 and seeds["load_limit"] == 300
        await eventually(lambda: _get(m, "/api/v1/seed-peer-clusters/hz-seeds", root))
        status, linked = await m.call("PATCH", "/api/v1/scheduler-clusters/fallback",
                                      {"seed_peer_cluster_ids": ["hz-seeds"]}, root)
        assert status == 200 and linked["seed_peer_clusters"] == ["hz-seeds"]
        assert linked["is_default"] is True


async def test_seed_peers_and_schedulers_show_active_or_inactive(
        nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_manager(nats_url, tmp_path, monkeypatch) as m:
        root = await eventually(lambda: m.try_sign_in("root", ROOT_PASSWORD))
        now = time.time()
        await Publisher(m.nc.jetstream()).publish_many([
            HostAnnounced(id=new_id(), at=now - 120, cluster="k", host_id="quiet-seed",
                          hostname="q", ip="127.0.0.2", upload_url="http://127.0.0.2:1",
                          seed=True),
            HostAnnounced(id=new_id(), at=now - 120, cluster="k", host_id="busy-seed",
                          hostname="b", ip="127.0.0.3", upload_url="http://127.0.0.3:1",
                          seed=True),
            HostKeepalive(id=new_id(), at=now, cluster="k", host_id="busy-seed"),
            HostAnnounced(id=new_id(), at=now, cluster="k", host_id="plain-peer", hostname="p",
                          ip="127.0.0.4", upload_url="http://127.0.0.4:1")])
        seeds = await eventually(lambda: _get(m, "/api/v1/seed-peers?cluster=k", root))
        assert {s["host_id"]: s["liveness"] for s in seeds} == {
            "quiet-seed": "inactive", "busy-seed": "active"}
        active = await _get(m, "/api/v1/seed-peers?cluster=k&state=active", root)
        assert [s["host_id"] for s in active] == ["busy-seed"]
        peers = await _get(m, "/api/v1/cluster-peers?cluster=k", root)
        assert [(p["host_id"], p["liveness"]) for p in peers] == [("plain-peer", "active")]
        status, schedulers = await m.call("GET", "/api/v1/schedulers", token=root)
        assert status == 200 and schedulers == []  # none runs in this test


async def _get(m: Manager, path: str, token: str) -> Any:
    """The JSON body of a 200 answer, else None."""
    status, body = await m.call("GET", path, token=token)
    return body if status == 200 else None


async def _equals(value: Awaitable[str], expected: str) -> str:
    got = await value
    return got if got == expected else ""


async def test_tokens_tenants_and_sealed_credentials(nats_url: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    password, bearer = "registry-password-3f9c", "Bearer registry-token-77ab"
    async with running_manager(nats_url, tmp_path, monkeypatch) as m:
        root = await eventually(lambda: m.try_sign_in("root", ROOT_PASSWORD))
        status, body = await m.call("POST", "/api/v1/users", {"name": "alice", "password":
                                    "alice-password", "tenant": "team-a"}, root)
        assert status == 404 and body["detail"].startswith("no tenant team-a")
        for tenant in ("team-a", "team-b"):
            status, _ = await m.call("POST", "/api/v1/applications", {"name": tenant}, root)
            assert status == 201
        await eventually(lambda: _get(m, "/api/v1/applications/team-b", root))
        status, _ = await m.call("POST", "/api/v1/users", {"name": "alice", "password":
                                 "alice-password", "role": "root", "tenant": "team-a"}, root)
        assert status == 201
        alice = await eventually(lambda: m.try_sign_in("alice", "alice-password"))
        status, issued = await m.call("POST", "/api/v1/personal-access-tokens",
                                      {"name": "ci", "scopes": ["job"]}, alice)
        assert status == 201 and issued["token"].startswith("dfp_")
        pat = issued["token"]

        args = {"url": "http://127.0.0.1:9/file.bin", "username": "puller", "password": password,
                "headers": {"Authorization": bearer, "X-Trace": "t1"}}
        preheat = {"type": "preheat", "args": args}
        created = await eventually(lambda: _create(m, "/oapi/v1/jobs", preheat, pat))
        assert created["application"] == "team-a"
        status, body = await m.call("POST", "/oapi/v1/jobs", {**preheat, "args": {
            **args, "application": "team-b"}}, pat)
        assert status == 403 and "tenant 'team-a'" in body["detail"]
        status, other = await m.call("POST", "/api/v1/jobs", {**preheat, "args": {
            **args, "application": "team-b"}}, root)
        assert status == 201

        # Tenants see their own jobs only.
        mine = await eventually(lambda: _get(m, f"/oapi/v1/jobs/{created['id']}", pat))
        assert mine["job"]["application"] == "team-a"
        status, _ = await m.call("GET", f"/oapi/v1/jobs/{other['id']}", token=pat)
        assert status == 404
        status, listed = await m.call("GET", "/oapi/v1/jobs", token=pat)
        assert {j["application"] for j in listed} == {"team-a"}
        status, tenants = await m.call("GET", "/api/v1/applications", token=alice)
        assert [t["tenant"] for t in tenants] == ["team-a"]
        status, body = await m.call("POST", "/api/v1/scheduler-clusters", {"id": "a"}, pat)
        assert status == 403 and "lacks the 'cluster' scope" in body["detail"]

        # ... and their own tasks and peers only.
        facts = (("a", "team-a"), ("b", "team-b"))
        await Publisher(m.nc.jetstream()).publish_many([
            *(HostAnnounced(id=new_id(), at=time.time(), cluster="default", host_id=f"h-{task}",
                            hostname=f"h-{task}", ip="127.0.0.1", upload_url="http://h")
              for task, _ in facts),
            *(PeerRegistered(id=new_id(), at=time.time(), cluster="default", task_id=task * 64,
                             peer_id=f"peer-{task}", host_id=f"h-{task}", url=f"http://o/{app}",
                             application=app) for task, app in facts)])
        await eventually(lambda: _get(m, f"/oapi/v1/tasks/{'b' * 64}", root))
        status, seen = await m.call("GET", "/oapi/v1/tasks", token=alice)
        assert [t["task_id"] for t in seen] == ["a" * 64]
        status, _ = await m.call("GET", f"/oapi/v1/tasks/{'b' * 64}", token=alice)
        assert status == 404
        status, seen = await m.call("GET", "/oapi/v1/peers", token=alice)
        assert [p["peer_id"] for p in seen] == ["peer-a"]
        status, body = await m.call("GET", "/oapi/v1/tasks", token=pat)
        assert status == 403 and "lacks the 'task' scope" in body["detail"]

        # The read API behind the console answers the same: no login, nothing; a tenant's
        # user, its rows only — in lists, drill-downs, the overview and every dashboard.
        await eventually(lambda: _get(m, "/api/v1/hosts?q=h-b", root))
        status, body = await m.call("GET", "/api/v1/tasks")
        assert status == 401 and "sign in first" in body["detail"]
        for path, key in (("/api/v1/tasks", "task_id"), ("/api/v1/peers", "peer_id"),
                          ("/api/v1/hosts", "host_id"), ("/api/v1/jobs", "application")):
            status, seen = await m.call("GET", path, token=alice)
            assert status == 200 and {r[key] for r in seen} == {
                "task_id": {"a" * 64}, "peer_id": {"peer-a"}, "host_id": {"h-a"},
                "application": {"team-a"}}[key], path
        status, seen = await m.call("GET", "/api/v1/tasks", token=root)
        assert {t["task_id"] for t in seen} == {"a" * 64, "b" * 64}
        status, _ = await m.call("GET", f"/api/v1/tasks/{'b' * 64}", token=alice)
        assert status == 404
        status, _ = await m.call("GET", f"/api/v1/tasks/{'b' * 64}/peers/peer-b", token=alice)
        assert status == 404
        status, _ = await m.call("GET", f"/api/v1/jobs/{other['id']}", token=alice)
        assert status == 404
        status, seen = await m.call("GET", "/api/v1/overview", token=alice)
        assert (seen["totals"]["tasks"], seen["totals"]["peers"]) == (1, 1)
        assert {j["state"] for j in seen["jobs"]} and sum(j["jobs"] for j in seen["jobs"]) == 1
        status, panel = await m.call("GET", "/api/v1/dashboards/top_tasks", token=alice)
        assert [r[0] for r in panel["rows"]] == ["http://o/team-a"]
        status, body = await m.call("POST", "/api/v1/sql", {"sql": "SELECT * FROM tasks"}, alice)
        assert status == 403 and "bound to tenant 'team-a'" in body["detail"]

        # Credentials never reach the log or DuckDB in clear text.
        await eventually(lambda: _get(m, f"/oapi/v1/jobs/{other['id']}", root))
        logged = await _stream_bytes(m.nc, "DF_JOBS") + await _stream_bytes(m.nc, "DF_ADMIN")
        assert b"X-Trace" in logged and b"sealed_credentials" in logged
        stored = b"".join(p.read_bytes() for p in tmp_path.glob("manager.duckdb*"))
        for secret in (password, bearer, "registry-token-77ab", pat.split("_", 2)[2],
                       "alice-password"):
            assert secret.encode() not in logged
            assert secret.encode() not in stored

        # Revoked and expired tokens are refused with the reason.
        status, short = await m.call("POST", "/api/v1/personal-access-tokens",
                                     {"name": "short", "scopes": ["job"], "expires_in": 0.5}, alice)
        await eventually(lambda: _create(m, "/oapi/v1/jobs", preheat, short["token"]))
        await asyncio.sleep(0.6)  # the scenario itself: the token's 0.5 s lifetime runs out
        status, body = await m.call("POST", "/oapi/v1/jobs", preheat, short["token"])
        assert status == 401 and "expired at" in body["detail"]
        status, _ = await m.call("DELETE", f"/api/v1/personal-access-tokens/{issued['token_id']}",
                                 token=alice)
        assert status == 200
        status, body = await m.call("POST", "/oapi/v1/jobs", preheat, pat)
        assert (status, body["detail"]) == (401, "personal access token revoked")


async def _create(m: Manager, path: str, body: object, token: str) -> Any:
    status, answer = await m.call("POST", path, body, token)
    return answer if status == 201 else None


@pytest.mark.parametrize(("body", "status", "says"), [
    ({"type": "warm", "args": {}}, 422, "type"),
    ({"type": "preheat", "args": {}}, 422, "args: give url, or urls"),
    ({"type": "preheat", "args": {"url": "ftp://x/y"}}, 422, "args.url"),
    ({"type": "preheat", "args": {"url": "http://x/y", "scope": "everyone"}}, 422, "args.scope"),
    ({"type": "preheat", "args": {"url": "http://x/y"}, "scheduler_cluster_ids": ["mars"]},
     404, "unknown scheduler clusters: mars"),
    ({"type": "delete_task", "args": {}}, 422, "give task_id, or url"),
    ({"type": "get_task", "args": {"task_id": "abc"}}, 422, "args.task_id"),
    ({"type": "preheat", "args": {"url": "http://x/y"}, "scheduler_cluster_ids": [7]},
     404, "unknown scheduler clusters: 7"),
])
async def test_bad_job_bodies_get_a_clear_4xx(nats_url: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, body: object,
                                             status: int, says: str) -> None:
    async with running_manager(nats_url, tmp_path, monkeypatch) as m:
        root = await eventually(lambda: m.try_sign_in("root", ROOT_PASSWORD))
        got, answer = await m.call("POST", "/api/v1/jobs", body, root)
        assert got == status
        assert says in msgspec.json.encode(answer["detail"]).decode()

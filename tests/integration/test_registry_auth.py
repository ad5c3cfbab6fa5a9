"""A registry that wants a bearer token (as Docker Hub does), on loopback: the mirror relays
its challenge, the client's token reaches the registry for the blob, and the token stays out
of the event log; ``bearer_token`` gets one from the realm the challenge names."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from damselfly.events.codec import encode
from damselfly.events.tasks import PeerRegistered
from damselfly.services.peer.daemon import DaemonConfig
from damselfly.services.peer.fetchbook import Settings
from damselfly.services.peer.oci import basic_auth, bearer_token
from damselfly.services.peer.proxy import ProxyConfig
from damselfly.services.runtime.natsconn import connect
from tests.support.swarm import daemon_in_process, read_events

pytestmark = pytest.mark.anyio
BLOB = os.urandom(40_000)
DIGEST = f"sha256:{hashlib.sha256(BLOB).hexdigest()}"
LOGIN = basic_auth("alice", "wonderland")
TOKEN = secrets.token_hex(16)


@asynccontextmanager
async def token_registry() -> AsyncIterator[tuple[str, list[str]]]:
    """A registry and its token service in one app; yields its URL and the Authorization
    of every blob request."""
    seen: list[str] = []
    base = ""

    def challenge() -> web.Response:
        return web.json_response(
            {"errors": [{"code": "UNAUTHORIZED", "message": "login"}]}, status=401,
            headers={"WWW-Authenticate": f'Bearer realm="{base}/token",service="test"'})

    async def probe(request: web.Request) -> web.Response:
        return challenge()

    async def token(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != LOGIN \
                or request.query.get("scope") != "repository:team/app:pull":
            return web.Response(status=401)
        return web.json_response({"token": TOKEN})

    async def blob(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return challenge()
        return web.Response(body=BLOB, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/v2/", probe)
    app.router.add_get("/token", token)
    app.router.add_route("*", f"/v2/team/app/blobs/{DIGEST}", blob)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield base, seen
    finally:
        await runner.cleanup()


async def test_bearer_token_follows_the_challenge_to_the_realm() -> None:
    async with token_registry() as (url, _), aiohttp.ClientSession() as http:
        assert await bearer_token(http, url, "team/app", LOGIN) == f"Bearer {TOKEN}"
        with pytest.raises(aiohttp.ClientResponseError):
            await bearer_token(http, url, "team/app", basic_auth("alice", "wrong"))


async def test_a_client_with_a_token_pulls_a_blob_through_the_mirror(
        tmp_path: Path, nats_url: str) -> None:
    cluster = f"c{secrets.token_hex(4)}"
    async with token_registry() as (url, seen), aiohttp.ClientSession() as http:
        cfg = DaemonConfig(nats_url=nats_url, data_dir=tmp_path / "d", secret="s",
                           cluster=cluster, ready_file=tmp_path / "ready.json", proxy_port=0,
                           proxy=ProxyConfig(registry=url), settings=Settings(
                               schedule_timeout=0.3, source_attempts=1))
        async with daemon_in_process(cfg) as endpoints:
            mirror = str(endpoints["proxy_url"])
            async with http.get(f"{mirror}/v2/") as answer:
                relayed = (answer.status, answer.headers["WWW-Authenticate"])
            async with http.get(f"{mirror}/v2/team/app/blobs/{DIGEST}") as answer:
                refused = (answer.status, answer.headers.get("WWW-Authenticate"),
                           (await answer.json())["errors"][0]["code"])
            authorization = await bearer_token(http, url, "team/app", LOGIN)
            async with http.get(f"{mirror}/v2/team/app/blobs/{DIGEST}",
                                headers={"Authorization": authorization}) as answer:
                pulled = await answer.read()
    assert relayed == (401, f'Bearer realm="{url}/token",service="test"')
    assert refused == (401, relayed[1], "UNAUTHORIZED")
    assert pulled == BLOB
    assert seen[-1] == f"Bearer {TOKEN}"
    nc = await connect(nats_url, "test")
    try:
        events = await read_events(nc.jetstream(), "DF_TASKS", f"df.task.{cluster}.>")
    finally:
        await nc.close()
    assert not any(TOKEN.encode() in encode(e) for e in events)
    # Only this client holds the token, so its peer goes to the registry itself.
    assert [e.priority for e in events if isinstance(e, PeerRegistered)][-1] == 3

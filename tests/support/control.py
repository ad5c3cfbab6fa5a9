"""In-process pieces for the control and preheat tests: a manager with the control side
(real nats-server, real DuckDB file, the real app served by uvicorn on loopback, the
projector, ``control.run``), and peer hosts running the job worker over real downloads,
storage and upload servers. No test lives here."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
import uvicorn
from aiohttp import web
from nats.aio.client import Client

from damselfly.events.bus import Publisher
from damselfly.events.hosts import HostAnnounced
from damselfly.events.ids import new_id
from damselfly.events.streams import ensure_streams
from damselfly.projections import store
from damselfly.projections.projector import Projector
from damselfly.services.manager.app import create_app
from damselfly.services.manager.control import service as control
from damselfly.services.manager.reader import Reader
from damselfly.services.peer.downloader import PeerContext
from damselfly.services.peer.downloads import Downloads
from damselfly.services.peer.fetchbook import Settings
from damselfly.services.peer.jobs import run_job_worker
from damselfly.services.peer.metrics import TransferStats
from damselfly.services.peer.origins import Sources
from damselfly.services.peer.parents import ParentClient
from damselfly.services.peer.storage import Storage
from damselfly.services.peer.upload import upload_app
from damselfly.services.runtime.natsconn import connect
from tests.support.wait import eventually

ROOT_PASSWORD = "root-password-for-tests"
SECRET = "cluster-secret-for-tests"


@dataclass
class Manager:
    url: str
    nc: Client
    db: Path
    session: aiohttp.ClientSession

    async def call(self, method: str, path: str, body: object = None, token: str = ""
                   ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.request(method, self.url + path, json=body,
                                        headers=headers) as r:
            return r.status, await r.json(content_type=None)

    async def try_sign_in(self, name: str, password: str) -> str:
        """A session token, or "" while the user is not (yet) projected."""
        status, body = await self.call("POST", "/api/v1/users/signin",
                                       {"name": name, "password": password})
        return str(body["token"]) if status == 200 else ""


async def job_outcome(m: Manager, token: str, job_id: str) -> dict[str, Any] | None:
    """A job with its hosts once it succeeded or failed, else None."""
    status, body = await m.call("GET", f"/oapi/v1/jobs/{job_id}", token=token)
    if status != 200 or body["job"]["state"] not in ("succeeded", "failed"):
        return None
    return dict(body)


@dataclass
class PeerHost:
    storage: Storage
    downloads: Downloads
    upload_url: str


@contextlib.asynccontextmanager
async def peer_host(nats_url: str, data: Path, host_id: str, *, cluster: str = "default",
                    seed: bool = True) -> AsyncIterator[PeerHost]:
    """What the daemon builds for its downloads — storage, an upload server, a host
    announcement — with the job worker running on it."""
    nc = await connect(nats_url, host_id)
    js = nc.jetstream()
    storage = Storage(data)
    stats = TransferStats()
    runner = web.AppRunner(upload_app(storage, SECRET, stats), access_log=None)
    await runner.setup()
    sock = socket.create_server(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    upload_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    ctx = PeerContext(cluster=cluster, host_id=host_id, secret=SECRET, nc=nc, js=js,
                      publisher=Publisher(js), storage=storage, sources=Sources.default(),
                      parents=ParentClient(), stats=stats, settings=Settings(schedule_timeout=5.0))
    try:
        async with anyio.create_task_group() as tg:
            downloads = Downloads(ctx, tg)
            ctx.active = downloads.active
            # Started once its consumers exist: no job asked for after this is missed.
            await tg.start(functools.partial(run_job_worker, downloads, seed=seed))
            await ctx.publish(HostAnnounced(id=new_id(), at=time.time(), cluster=cluster,
                                            host_id=host_id, hostname=host_id, ip="127.0.0.1",
                                            upload_url=upload_url, seed=seed))
            try:
                yield PeerHost(storage, downloads, upload_url)
            finally:
                downloads.cancel_all()
                tg.cancel_scope.cancel()
    finally:
        await runner.cleanup()
        for tf in storage.tasks():
            tf.close()
        await nc.drain()


@contextlib.asynccontextmanager
async def running_manager(nats_url: str, data: Path, monkeypatch: pytest.MonkeyPatch,
                          **coordinator: float) -> AsyncIterator[Manager]:
    monkeypatch.setenv("DAMSELFLY_CLUSTER_SECRET", SECRET)
    monkeypatch.setenv("DAMSELFLY_ROOT_PASSWORD", ROOT_PASSWORD)
    db = data / "manager.duckdb"
    con = store.connect(db)
    nc = await connect(nats_url, "test-control")
    js = nc.jetstream()
    await ensure_streams(js)
    reader = Reader(con)
    publisher = Publisher(js)
    app = create_app(reader=reader, projector=Projector(js, con), publisher=publisher, js=js)
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    stop = asyncio.Event()
    try:
        async with asyncio.TaskGroup() as group, aiohttp.ClientSession() as session:
            group.create_task(server.serve(sockets=[sock]))
            group.create_task(app.state.projector.run(stop))
            group.create_task(control.run(nc, reader, publisher, stop, **coordinator))

            async def serving() -> bool:
                return server.started

            await eventually(serving)
            try:
                yield Manager(f"http://127.0.0.1:{sock.getsockname()[1]}", nc, db, session)
            finally:
                stop.set()
                server.should_exit = True
        reader.close()
    finally:
        await nc.drain()
        con.close()

"""Bootstrap of the manager service: NATS, the DuckDB file it owns, the projector, and the
HTTP server on loopback, in one task group until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import anyio
import uvicorn

from damselfly.events.bus import Publisher
from damselfly.events.streams import ensure_streams
from damselfly.projections import store
from damselfly.projections.projector import Projector
from damselfly.services.manager.app import create_app
from damselfly.services.manager.control import service as control
from damselfly.services.manager.reader import Reader
from damselfly.services.manager.sources import DB_NAME
from damselfly.services.runtime.natsconn import connect
from damselfly.services.runtime.procs import write_ready

log = logging.getLogger("damselfly.manager")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the manager's stop event ends it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(nats_url: str, data_dir: Path, port: int, ready_file: Path | None,
                stop: asyncio.Event, host: str = "127.0.0.1") -> None:
    """Run the manager until ``stop`` is set. Raises ``OSError`` when the port is taken or
    NATS does not answer, ``duckdb.IOException`` when another process holds the file."""
    db = data_dir / DB_NAME
    con = await asyncio.to_thread(store.connect, db)
    try:
        nc = await connect(nats_url, "damselfly-manager")
        try:
            js = nc.jetstream()
            await ensure_streams(js)
            projector = Projector(js, con)
            reader = Reader(con)
            app = create_app(reader=reader, projector=projector, publisher=Publisher(js), js=js)
            sock = socket.create_server((host, port))
            server = _Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.serve, [sock], name="http")
                tg.start_soon(projector.run, stop, name="projector")
                tg.start_soon(control.run, nc, reader, app.state.publisher, stop, name="control")
                while not server.started:
                    await anyio.sleep(0.05)
                url = f"http://{host}:{sock.getsockname()[1]}"
                log.info("manager serving %s with %s", url, db)
                if ready_file is not None:
                    write_ready(ready_file, {"url": url, "db": str(db)})
                await stop.wait()
                server.should_exit = True
            reader.close()
        finally:
            await nc.drain()
    finally:
        con.close()

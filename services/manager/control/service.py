"""The control side as the manager runs it: its routers (``ROUTERS``, for the app) and its
background work (``run``: the first root user, cluster search over NATS, the job
coordinator)."""

from __future__ import annotations

import asyncio
from typing import Final

import anyio
from fastapi import APIRouter
from nats.aio.client import Client

from damselfly.events.bus import Publisher
from damselfly.services.manager.control import clusters, jobs, tenants, tokens, users
from damselfly.services.manager.control.coordinator import Coordinator
from damselfly.services.manager.control.search import serve_search
from damselfly.services.manager.control.users import ensure_root
from damselfly.services.manager.reader import Reader

ROUTERS: Final[tuple[APIRouter, ...]] = (
    clusters.router, jobs.router, users.router, tokens.router, tenants.router)


async def run(nc: Client, reader: Reader, publisher: Publisher, stop: asyncio.Event,
              **coordinator: float) -> None:
    """Create the root user if the log has none, then answer cluster searches and
    coordinate jobs until ``stop`` is set. Raises NATS errors when NATS fails at start."""
    js = nc.jetstream()
    await ensure_root(js)
    async with anyio.create_task_group() as tg:
        tg.start_soon(serve_search, nc, reader, stop, name="cluster search")
        tg.start_soon(Coordinator(js, reader, publisher, **coordinator).run, stop,
                      name="job coordinator")

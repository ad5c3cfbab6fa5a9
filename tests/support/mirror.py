"""A daemon run in-process as a registry mirror in front of an origin laid out like a registry."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from damselfly.services.peer.daemon import DaemonConfig
from damselfly.services.peer.fetchbook import Settings
from damselfly.services.peer.proxy import ProxyConfig, ProxyRule
from damselfly.services.peer.proxy_intercept import InterceptCA
from tests.support.swarm import Origin, OriginFaults, daemon_in_process

PIECE = 16 << 10
SIZE = 12 * PIECE + 321
NAME = "library/app"


@dataclass
class Mirror:
    url: str
    origin: Origin
    api_url: str
    cluster: str
    data_dir: Path

    async def status(self, http: aiohttp.ClientSession, task_id: str) -> dict[str, Any]:
        """The daemon's local API's view of a task."""
        async with http.get(f"{self.api_url}/v1/tasks/{task_id}") as answer:
            return dict(await answer.json())


def put_blob(root: Path, data: bytes, *, digest: str = "") -> str:
    """Lay ``data`` out where a registry serves it; returns its digest (or ``digest``)."""
    digest = digest or f"sha256:{hashlib.sha256(data).hexdigest()}"
    path = root / "v2" / NAME / "blobs" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


@asynccontextmanager
async def mirror(tmp_path: Path, nats_url: str, faults: OriginFaults | None = None,
                 rules: tuple[ProxyRule, ...] = (), ca: InterceptCA | None = None
                 ) -> AsyncIterator[Mirror]:
    origin = Origin(tmp_path / "www", faults or OriginFaults())
    (tmp_path / "www").mkdir(exist_ok=True)
    await origin.start()
    cluster = f"c{secrets.token_hex(4)}"
    cfg = DaemonConfig(nats_url=nats_url, data_dir=tmp_path / "d", secret="s", cluster=cluster,
                       api_port=0, ready_file=tmp_path / "ready.json", proxy_port=0,
                       proxy=ProxyConfig(registry=origin.url, rules=rules, piece_length=PIECE,
                                         timeout=5, ca=ca),
                       settings=Settings(schedule_timeout=0.3, source_backoff=0.05,
                                         source_attempts=2))
    try:
        async with daemon_in_process(cfg) as endpoints:
            yield Mirror(str(endpoints["proxy_url"]), origin, str(endpoints["api_url"]), cluster,
                         tmp_path / "d")
    finally:
        await origin.stop()

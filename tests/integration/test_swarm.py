"""The issue's "done when": a swarm on one machine — an origin that counts its bytes, a real
scheduler, one seed peer and ten peers, all processes — fetches one file on every peer with
identical digests while the origin serves it about once."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from damselfly.services.peer.get import ApiClient
from damselfly.services.peer.request import DownloadRequest
from damselfly.services.peer.upload import mint_token
from tests.support.swarm import Origin, Swarm

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
PIECE = 32 << 10
SIZE = 24 * PIECE + 777
PEERS = 10


async def fetch(api_url: str, request: DownloadRequest, out: Path) -> dict[str, Any]:
    client = ApiClient(api_url)
    try:
        status = await client.download(request)
        if status["state"] == "succeeded":
            await client.export(status["task_id"], out)
        return status
    finally:
        await client.close()


async def test_ten_peers_fetch_one_file_while_the_origin_serves_it_once(
        tmp_path: Path, nats_url: str) -> None:
    www = tmp_path / "www"
    www.mkdir()
    body = os.urandom(SIZE)
    (www / "blob.bin").write_bytes(body)
    origin = Origin(www)
    await origin.start()
    request = DownloadRequest(url=f"{origin.url}/blob.bin", piece_length=PIECE)
    results: dict[str, dict[str, Any]] = {}
    try:
        cluster = f"c{secrets.token_hex(4)}"
        with Swarm(nats_url, tmp_path / "swarm", PEERS, cluster=cluster) as swarm:
            async def one(name: str, api_url: str) -> None:
                results[name] = await fetch(api_url, request, tmp_path / f"{name}.out")

            with anyio.fail_after(120):
                async with anyio.create_task_group() as tg:
                    for service in swarm.peer_services:
                        tg.start_soon(one, service.name, str(service.endpoints["api_url"]))
            # The peers fetched from each other with the scheduler's grants alone: the
            # cluster secret, which every daemon holds, opens no upload server.
            task_id = results["peer-1"]["task_id"]
            upload_url = swarm.peer_services[1].endpoints["upload_url"]
            async with aiohttp.ClientSession() as s, s.get(
                    f"{upload_url}/v1/tasks/{task_id}/content",
                    headers={"Range": "bytes=0-1",
                             "Authorization": f"Bearer {mint_token(swarm.secret, task_id)}"}
            ) as r:
                refused = (r.status, (await r.text()).strip())
    finally:
        await origin.stop()

    assert sorted(results) == sorted(f"peer-{i}" for i in range(1, PEERS + 1))
    assert all(r["state"] == "succeeded" for r in results.values()), results
    want = hashlib.sha256(body).hexdigest()
    digests = {hashlib.sha256((tmp_path / f"{n}.out").read_bytes()).hexdigest() for n in results}
    assert digests == {want}
    assert origin.bytes_served / SIZE <= 1.1, origin.bytes_served
    assert sum(r["bytes_from_peers"] for r in results.values()) >= (PEERS - 1) * SIZE
    assert refused == (401, "malformed upload grant")

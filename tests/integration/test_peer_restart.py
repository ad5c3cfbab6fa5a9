"""A daemon killed mid-download resumes after a restart without refetching finished pieces,
and serves what it holds."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

import aiohttp
import anyio
import msgspec
import pytest

from damselfly.services.peer.get import ApiClient
from damselfly.services.peer.request import DownloadRequest
from damselfly.services.peer.storage import TaskMeta
from damselfly.services.peer.upload import mint_token
from tests.support.swarm import Origin, OriginFaults, daemon_service
from tests.support.wait import eventually

pytestmark = pytest.mark.anyio
PIECE = 32 << 10
SIZE = 24 * PIECE + 5


async def test_restarted_daemon_resumes_from_its_first_missing_piece(
        tmp_path: Path, nats_url: str) -> None:
    (tmp_path / "www").mkdir()
    body = os.urandom(SIZE)
    (tmp_path / "www" / "f.bin").write_bytes(body)
    origin = Origin(tmp_path / "www", OriginFaults(rate=200_000))
    await origin.start()
    daemon = daemon_service("peer", nats_url, tmp_path / "peer", "s", "--schedule-timeout",
                            "0.5", cluster=f"c{secrets.token_hex(4)}")
    request = DownloadRequest(url=f"{origin.url}/f.bin", piece_length=PIECE)
    try:
        await anyio.to_thread.run_sync(daemon.start)
        client = ApiClient(str(daemon.endpoints["api_url"]))
        task_id = (await client.start(request))["task_id"]
        meta = tmp_path / "peer" / "tasks" / task_id / "meta.json"

        def recorded() -> int:  # pieces the daemon has written down (every SAVE_EVERY s)
            try:
                stored = msgspec.json.decode(meta.read_bytes(), type=TaskMeta)
            except (OSError, msgspec.DecodeError):
                return 0
            return sum(b.bit_count() for b in stored.bitmap)

        async def four_recorded() -> bool:
            return recorded() >= 4

        await eventually(four_recorded)
        await client.close()
        held_before = recorded() * PIECE
        daemon.kill()
        assert held_before < SIZE

        origin.faults.rate = 0
        await anyio.to_thread.run_sync(daemon.start)
        client = ApiClient(str(daemon.endpoints["api_url"]))
        try:
            status = await client.finish(task_id)
            await client.export(status["task_id"], tmp_path / "out.bin")
            async with aiohttp.ClientSession() as s, s.get(
                    f"{daemon.endpoints['upload_url']}/v1/tasks/{status['task_id']}/content",
                    headers={"Range": f"bytes=0-{PIECE - 1}",
                             "Authorization": f"Bearer {mint_token('s', status['task_id'])}"}
            ) as r:
                served = (r.status, await r.read())
        finally:
            await client.close()
    finally:
        daemon.stop()
        await origin.stop()
    assert status["state"] == "succeeded", status
    assert (tmp_path / "out.bin").read_bytes() == body
    resumed = re.fullmatch(r"bytes=(\d+)-", origin.requests[-1])
    assert resumed is not None, origin.requests
    resumed_at = int(resumed[1])
    assert len(origin.requests) == 2 and origin.requests[0] == ""
    assert resumed_at % PIECE == 0 and resumed_at >= held_before
    assert status["bytes_from_origin"] == SIZE - resumed_at
    assert served == (206, body[:PIECE])

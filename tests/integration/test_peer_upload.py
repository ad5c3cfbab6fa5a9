"""The upload server on a real loopback socket: ranges, refusals, limits and metrics."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict
from unittest import mock

import aiohttp
import anyio
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from damselfly.events.grants import KEY_ENV, PUBKEY_ENV, GrantSigner, GrantVerifier
from damselfly.services.peer.metrics import TransferStats
from damselfly.services.peer.parents import ParentClient
from damselfly.services.peer.request import DownloadRequest
from damselfly.services.peer.storage import Storage, TaskFile
from damselfly.services.peer.upload import mint_token, upload_app
from tests.support.metrics import samples
from tests.support.swarm import grant_keys
from tests.support.wait import eventually

if TYPE_CHECKING:
    from typing_extensions import Unpack

pytestmark = pytest.mark.anyio
PIECE = 10_000


def held_task(tmp_path: Path, pieces: int, holes: set[int]) -> tuple[Storage, TaskFile, bytes]:
    storage = Storage(tmp_path / "d")
    request = DownloadRequest(url="http://o/f")
    tf = storage.create(request.task_id(), request)
    body = os.urandom(pieces * PIECE - 10)
    tf.shape(len(body), PIECE)
    tf.write(0, body)
    for piece in range(pieces):
        if piece not in holes:
            tf.mark(piece, "sha256:x")
    return storage, tf, body


class Limits(TypedDict, total=False):
    max_uploads: int
    rate_limit: float
    max_slot_wait: float
    compress: bool
    grants: GrantVerifier
    host_id: str


@asynccontextmanager
async def serving(storage: Storage, **limits: Unpack[Limits]
                  ) -> AsyncIterator[tuple[str, TransferStats]]:
    stats = TransferStats()
    runner = web.AppRunner(upload_app(storage, "secret", stats, **limits))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", stats
    finally:
        await runner.cleanup()


async def get(url: str, task_id: str, rng: str, token: str | None = None) -> tuple[int, bytes,
                                                                                  dict[str, str]]:
    headers = {"Range": rng, "Authorization": f"Bearer {token or mint_token('secret', task_id)}"}
    async with aiohttp.ClientSession() as s, \
            s.get(f"{url}/v1/tasks/{task_id}/content", headers=headers) as r:
        return r.status, await r.read(), dict(r.headers)


async def test_with_a_grant_key_only_a_granted_child_is_served(tmp_path: Path) -> None:
    storage, tf, body = held_task(tmp_path, 3, holes=set())
    other = DownloadRequest(url="http://o/other").task_id()
    key, pub = grant_keys(tmp_path / "keys")
    with mock.patch.dict(os.environ, {KEY_ENV: str(key), PUBKEY_ENV: str(pub)}):
        signer, verifier = GrantSigner.from_env(), GrantVerifier.from_env()
    assert signer is not None and verifier is not None
    later = time.time() + 60
    async with serving(storage, grants=verifier, host_id="parent-host") as (url, _):
        granted = signer.grant(tf.task_id, "child-1", "parent-host", later)
        status, data, _ = await get(url, tf.task_id, f"bytes=0-{PIECE - 1}", token=granted)
        assert (status, data) == (206, body[:PIECE])
        refused = [  # (the one line a refused child reads, what it sent)
            ("malformed upload grant", mint_token("secret", tf.task_id)),  # the secret's
            ("malformed upload grant", granted.replace(".", "")),
            ("the upload grant is for another parent",
             signer.grant(tf.task_id, "child-1", "another-host", later)),
            ("the upload grant is for another task",
             signer.grant(other, "child-1", "parent-host", later)),
            ("the upload grant has expired: ask the scheduler again",
             signer.grant(tf.task_id, "child-1", "parent-host", time.time() - 1)),
            ("the upload grant is not the scheduler's",
             GrantSigner(Ed25519PrivateKey.generate()).grant(tf.task_id, "child-1",
                                                             "parent-host", later)),
        ]
        for reason, token in refused:
            status, data, _ = await get(url, tf.task_id, "bytes=0-1", token=token)
            assert (status, data.decode().strip()) == (401, reason), reason


async def test_ranges_it_holds_and_refusals(tmp_path: Path) -> None:
    storage, tf, body = held_task(tmp_path, 5, holes={3})
    async with serving(storage) as (url, stats):
        status, data, _ = await get(url, tf.task_id, f"bytes={PIECE}-{3 * PIECE - 1}")
        assert (status, data) == (206, body[PIECE:3 * PIECE])
        status, data, _ = await get(url, tf.task_id, "bytes=5-9")
        assert (status, data) == (206, body[5:10])
        status, _, headers = await get(url, tf.task_id, f"bytes={2 * PIECE}-{3 * PIECE}")
        assert status == 416 and headers["Content-Range"] == f"bytes */{len(body)}"
        for unsatisfiable in ("bytes=-0", f"bytes={len(body)}-", "bytes=0-1,4-5", "lines=1-2"):
            status, _, headers = await get(url, tf.task_id, unsatisfiable)
            assert status == 416 and headers["Content-Range"] == f"bytes */{len(body)}", \
                unsatisfiable
        assert (await get(url, "f" * 64, "bytes=0-1"))[0] == 404
        assert (await get(url, tf.task_id, "bytes=0-1", token="forged"))[0] == 401
        wrong = mint_token("other", tf.task_id)
        assert (await get(url, tf.task_id, "bytes=0-1", token=wrong))[0] == 401
        async with aiohttp.ClientSession() as s, s.get(f"{url}/metrics") as r:
            metrics = await r.text()
    assert stats.upload_bytes == 2 * PIECE + 5
    scraped = samples(metrics)
    assert scraped[("damselfly_upload_bytes_total", ())] == 2 * PIECE + 5
    assert scraped[("damselfly_pieces_served_total", ())] == 2
    for code, n in (("206", 2), ("401", 2), ("404", 1), ("416", 5)):
        assert scraped[("damselfly_upload_responses_total", (("code", code),))] == n, code


async def test_requests_beyond_the_upload_limit_wait_their_turn(
        tmp_path: Path) -> None:
    storage, tf, _ = held_task(tmp_path, 5, holes=set())
    # At 25 kB/s each 50 kB transfer holds the only slot for ~2 s.
    async with serving(storage, max_uploads=1, rate_limit=25_000,
                       max_slot_wait=30.0) as (url, stats):
        codes: list[int] = []

        async def one(rng: str) -> None:
            codes.append((await get(url, tf.task_id, rng))[0])

        async def first_sent() -> bool:  # it reserved the next 2 s of the rate
            return codes == [206] and stats.uploads_running == 0

        async def second_holds_the_slot() -> bool:
            return stats.uploads_running == 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, "bytes=0-49999")
            await eventually(first_sent)
            tg.start_soon(one, "bytes=0-49999")
            await eventually(second_holds_the_slot)
            tg.start_soon(one, "bytes=0-9")  # queued behind the second, then served
    assert codes == [206, 206, 206]


async def test_bandwidth_limit_paces_uploads(tmp_path: Path) -> None:
    storage, tf, _ = held_task(tmp_path, 5, holes=set())
    async with serving(storage, rate_limit=100_000) as (url, _):
        started = time.monotonic()
        for _ in range(3):
            assert (await get(url, tf.task_id, "bytes=0-49999"))[0] == 206
        elapsed = time.monotonic() - started
    # 150 kB at 100 kB/s: the last transfer cannot start before 1 s has passed.
    assert elapsed >= 0.95


async def test_a_saturated_rate_limit_answers_503_instead_of_queueing_past_timeouts(
        tmp_path: Path) -> None:
    storage, tf, _ = held_task(tmp_path, 5, holes=set())
    # 10 kB/s: the first 50 kB reserves 5 s, so a second one would queue past the 2 s bound.
    async with serving(storage, rate_limit=10_000) as (url, _):
        codes: list[int] = []

        async def one(rng: str) -> None:
            codes.append((await get(url, tf.task_id, rng))[0])

        async def first_sent() -> bool:  # it reserved the next 5 s of the rate
            return codes == [206]

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, "bytes=0-49999")
            await eventually(first_sent)
            tg.start_soon(one, "bytes=0-49999")
    assert sorted(codes) == [206, 503]


def task_of(tmp_path: Path, name: str, body: bytes, piece: int) -> tuple[Storage, TaskFile]:
    storage = Storage(tmp_path / name)
    request = DownloadRequest(url=f"http://o/{name}")
    tf = storage.create(request.task_id(), request)
    tf.shape(len(body), piece)
    tf.write(0, body)
    for p in range(tf.piece_count):
        tf.mark(p, "sha256:x")
    return storage, tf


def fetch_into(tmp_path: Path, url: str, src: TaskFile, piece: int,
               client: ParentClient | None = None) -> tuple[str, bytes]:
    """What a child gets for one piece through ParentClient (it accepts zstd)."""
    storage = Storage(tmp_path / f"child-{src.task_id[:6]}-{piece}")
    tf = storage.create(src.task_id, src.meta.request)
    tf.shape(src.meta.content_length, src.meta.piece_length)
    offset = piece * src.meta.piece_length
    length = min(src.meta.piece_length, src.meta.content_length - offset)
    digest = (client or ParentClient()).fetch(url, src.task_id, mint_token("secret", src.task_id),
                                              offset, length, tf)
    with tf.reader() as f:
        return digest, os.pread(f.fileno(), length, offset)


async def test_a_compressible_task_goes_out_zstd_and_arrives_whole(tmp_path: Path) -> None:
    piece = 512 << 10
    one_thread = anyio.CapacityLimiter(1)
    text = b"".join(b"layer %08d: the quick brown fox jumps over the lazy dog\n" % i
                    for i in range(40_000))[:3 * piece - 123]
    noise = os.urandom(2 * piece)
    texts, text_tf = task_of(tmp_path, "text", text, piece)
    noises, noise_tf = task_of(tmp_path, "noise", noise, piece)
    for storage, tf, body, compressed in ((texts, text_tf, text, True),
                                          (noises, noise_tf, noise, False)):
        async with serving(storage) as (url, stats):
            client = ParentClient()  # one kept-alive connection for every piece, as a child
            for p in range(tf.piece_count):
                digest, got = await anyio.to_thread.run_sync(fetch_into, tmp_path, url, tf, p,
                                                             client, limiter=one_thread)
                want = body[p * piece:(p + 1) * piece]
                assert got == want and digest == f"sha256:{hashlib.sha256(want).hexdigest()}"
        assert stats.upload_compressed == (tf.piece_count if compressed else 0)
        assert (stats.upload_bytes < len(body) / 3) if compressed else \
            stats.upload_bytes == len(body)
    async with serving(texts, compress=False) as (url, stats):
        assert (await anyio.to_thread.run_sync(fetch_into, tmp_path, url, text_tf, 0))[1] \
            == text[:piece]
    assert stats.upload_compressed == 0 and stats.upload_bytes == piece

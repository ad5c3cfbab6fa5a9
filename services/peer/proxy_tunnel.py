"""CONNECT passed through: after a 200, the proxy copies bytes both ways between the client
and ``host:port`` until either side is done (TLS stays end to end, nothing is cached).

aiohttp's compiled parser does not hand a CONNECT's later bytes to the handler, so the
tunnel takes the client's transport over with ``set_protocol`` before it answers."""

from __future__ import annotations

import asyncio
import logging
from typing import Final

import anyio
from aiohttp import web

log = logging.getLogger("damselfly.proxy")

CHUNK: Final = 1 << 16
QUEUED_HIGH: Final = 16
"""Chunks from the client waiting for the target before the client is paused."""


def parse_authority(target: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) of a CONNECT request. Raises ``ValueError``."""
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad CONNECT target {target!r}: want host:port")
    return host.strip("[]"), int(port)


class _ClientSide(asyncio.Protocol):
    """The client's end of a tunnel: its bytes queue up for the target (reading pauses
    while the target lags) and writes to it wait while its socket buffer is full."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.incoming: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.writable = asyncio.Event()
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        self.incoming.put_nowait(data)
        if self.incoming.qsize() >= QUEUED_HIGH:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.incoming.put_nowait(None)
        return True  # half-close: the target may still answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.incoming.put_nowait(None)
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()


async def tunnel(request: web.Request, host: str, port: int, timeout: float
                 ) -> web.StreamResponse:
    """Answer a CONNECT to ``host:port``. Raises ``OSError`` (or ``TimeoutError``) when it
    cannot be reached."""
    with anyio.fail_after(timeout):
        reader, writer = await asyncio.open_connection(host, port)
    transport = request.transport
    assert isinstance(transport, asyncio.Transport)
    client = _ClientSide(transport)
    transport.set_protocol(client)
    # A 2xx to CONNECT has no body framing: what follows on the socket is the tunnel.
    response = web.StreamResponse(status=200, reason="Connection established")
    response.force_close()

    async def client_to_target() -> None:
        while (chunk := await client.incoming.get()) is not None:
            writer.write(chunk)
            await writer.drain()
            if client.incoming.qsize() < QUEUED_HIGH // 2:
                transport.resume_reading()
        if writer.can_write_eof():
            writer.write_eof()

    try:
        await response.prepare(request)
        async with anyio.create_task_group() as tg:
            tg.start_soon(client_to_target)
            while (data := await reader.read(CHUNK)) and not transport.is_closing():
                transport.write(data)
                await client.writable.wait()
            tg.cancel_scope.cancel()  # the target is done: so is the tunnel
    except OSError as exc:
        log.info("tunnel to %s:%d ended: %r", host, port, exc)
    finally:
        writer.close()
        transport.close()
    return response

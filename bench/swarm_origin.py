"""The benchmarks' origin: an HTTP file server whose upload is capped at one rate shared by
every response (so N clients split U_s between them, as behind a real uplink), and which
counts the bytes it sent. ``GET /stats`` answers ``{"bytes_sent", "requests"}``.

Run: ``python -m bench.swarm_origin --root DIR --rate BYTES_PER_S --ready-file PATH``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aiohttp import web

from damselfly.services.peer.upload import Pacer
from damselfly.services.runtime.procs import write_ready
from damselfly.services.runtime.signals import stop_on_signals

CHUNK: Final = 64 << 10


@dataclass
class OriginStats:
    bytes_sent: int = 0
    requests: int = 0


def byte_range(asked: slice, size: int) -> tuple[int, int] | None:
    """``[start, stop)`` of a parsed Range within ``size`` bytes, None when unsatisfiable."""
    start = 0 if asked.start is None else (asked.start if asked.start >= 0
                                           else max(size + asked.start, 0))
    stop = size if asked.stop is None else min(asked.stop, size)
    return (start, stop) if start < stop else None


def origin_app(root: Path, rate: float, stats: OriginStats) -> web.Application:
    pacer = Pacer(rate)

    async def serve_file(request: web.Request) -> web.StreamResponse:
        path = (root / request.match_info["name"]).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise web.HTTPNotFound(text="no such file\n")
        stats.requests += 1
        size = path.stat().st_size
        try:
            asked = request.http_range
        except ValueError:
            raise web.HTTPRequestRangeNotSatisfiable(text="malformed Range\n") from None
        partial = "Range" in request.headers
        span = byte_range(asked, size) if partial else (0, size)
        if span is None:
            raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
        start, stop = span
        response = web.StreamResponse(status=206 if partial else 200, headers={
            "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"})
        if partial:
            response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        response.content_length = stop - start
        await response.prepare(request)
        fd = os.open(path, os.O_RDONLY)
        try:
            offset = start
            while offset < stop:
                n = min(CHUNK, stop - offset)
                if wait := pacer.delay(n):
                    await asyncio.sleep(wait)
                await response.write(os.pread(fd, n, offset))
                offset += n
                stats.bytes_sent += n
        finally:
            os.close(fd)
        await response.write_eof()
        return response

    async def stats_view(request: web.Request) -> web.Response:
        return web.json_response({"bytes_sent": stats.bytes_sent, "requests": stats.requests})

    app = web.Application()
    app.router.add_get("/stats", stats_view)
    app.router.add_get("/files/{name}", serve_file)
    return app


async def serve(root: Path, rate: float, ready_file: Path, host: str) -> None:
    stop = asyncio.Event()
    stop_on_signals(stop)
    runner = web.AppRunner(origin_app(root, rate, OriginStats()), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, 0)
        await site.start()
        port = runner.addresses[0][1]
        write_ready(ready_file, {"url": f"http://{host}:{port}"})
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, required=True, help="serve the files in this folder")
    p.add_argument("--rate", type=float, default=0.0, help="upload cap, bytes/s (0: none)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--ready-file", type=Path, required=True)
    args = p.parse_args()
    asyncio.run(serve(args.root.resolve(), args.rate, args.ready_file, args.host))


if __name__ == "__main__":
    main()

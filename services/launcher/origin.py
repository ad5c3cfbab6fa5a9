"""A local origin for the demo: serves a folder over HTTP with Range support on 127.0.0.1 and
counts the bytes it sends, so the demo can show how often the origin served the file."""

from __future__ import annotations

import ssl
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

CHUNK = 64 << 10


@dataclass
class Origin:
    """Serves files from ``root`` with Range support on 127.0.0.1, counting bytes sent.

    Subclasses may refuse a request (``refuse``) or act on each chunk (``sending``, ``sent``).
    """

    root: Path
    _: KW_ONLY
    bytes_served: int = 0
    requests: list[str] = field(default_factory=list)
    """The Range header of every request ("" for none), in order."""
    headers: list[dict[str, str]] = field(default_factory=list)
    url: str = ""
    ssl_context: ssl.SSLContext | None = None
    """Serve https with this context (http when None)."""
    _runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/{name:.*}", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context).start()
        port = self._runner.addresses[0][1]
        self.url = f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def refuse(self, request: web.Request) -> web.StreamResponse | None:
        """An answer instead of the file, or None to serve it."""
        return None

    def sending(self, request: web.Request, chunk: bytes) -> bool:
        """Whether to send ``chunk``; False ends the answer there."""
        return True

    async def sent(self, chunk: bytes) -> None:
        """Called after each chunk went out."""

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.headers.get("Range", ""))
        self.headers.append(dict(request.headers))
        refused = await self.refuse(request)
        if refused is not None:
            return refused
        path = (self.root / request.match_info["name"]).resolve()
        if not path.is_relative_to(self.root.resolve()) or not path.exists():
            return web.Response(status=404)
        if path.is_dir():  # a listing like ``python -m http.server`` writes
            links = "".join(f'<li><a href="{quote(p.name)}{"/" if p.is_dir() else ""}">{p.name}</a>'
                            for p in sorted(path.iterdir()))
            return web.Response(text=f"<html><body><ul>{links}</ul></body></html>",
                                content_type="text/html")
        size = path.stat().st_size
        start, stop_at = 0, size
        try:
            asked = request.http_range
        except ValueError:
            return web.Response(status=416)
        if asked.start is not None:
            start, stop_at = asked.start, min(asked.stop or size, size)
        ranged = request.headers.get("Range") is not None
        response = web.StreamResponse(status=206 if ranged else 200)
        response.content_length = stop_at - start
        if ranged:
            response.headers["Content-Range"] = f"bytes {start}-{stop_at - 1}/{size}"
        await response.prepare(request)
        with open(path, "rb") as f:  # noqa: ASYNC230 - a local origin: page-cache reads
            f.seek(start)
            sent = 0
            while sent < stop_at - start:
                data = f.read(min(CHUNK, stop_at - start - sent))
                if not self.sending(request, data):
                    return response
                await response.write(data)
                sent += len(data)
                self.bytes_served += len(data)
                await self.sent(data)
        return response

"""Serve a swarm download's bytes to an HTTP client while it is still downloading: each
piece is sent as soon as the task holds it, and the blob's final piece only once the whole
file matched its digest, so a corrupt blob never reaches the client whole."""

from __future__ import annotations

import logging
import os
from typing import Final

import anyio
from aiohttp import web
from anyio import to_thread

from damselfly.events.taskid import piece_range
from damselfly.services.peer.digests import file_digest, same_digest
from damselfly.services.peer.downloader import Download
from damselfly.services.peer.oci import parse_range
from damselfly.services.peer.storage import TaskFile

log = logging.getLogger("damselfly.proxy")

POLL: Final = 0.02
CHUNK: Final = 1 << 20


class TaskUnavailable(Exception):
    """The download failed; the message is its one-line reason."""


async def shaped_task(download: Download) -> TaskFile:
    """The task file once its length is known. Raises ``TaskUnavailable``."""
    while True:
        tf = download.tf
        if tf is not None and tf.shaped:
            return tf
        if download.finished.is_set():
            raise TaskUnavailable(download.error or f"download {download.state}")
        with anyio.move_on_after(POLL):
            await download.finished.wait()


async def _verified(tf: TaskFile, digest: str) -> bool:
    """Whether the finished file matches ``digest``; a download asked for the same digest
    already checked it before it succeeded."""
    if tf.meta.request.digest == digest:
        return True
    return same_digest(digest, await to_thread.run_sync(file_digest, tf.data_path, "sha256"))


async def _piece_ready(download: Download, tf: TaskFile, piece: int, digest: str) -> None:
    """Wait until ``piece`` may be released. Raises ``TaskUnavailable``."""
    final = bool(digest) and piece >= tf.piece_count - 1
    while True:
        if piece in tf.bitmap and not final:
            return
        if download.finished.is_set():
            if download.state != "succeeded":
                raise TaskUnavailable(download.error or f"download {download.state}")
            if not final:
                return
            if not await _verified(tf, digest):
                raise TaskUnavailable(f"content does not match {digest}")
            return
        with anyio.move_on_after(POLL):
            await download.finished.wait()


async def stream_task(request: web.BaseRequest, download: Download, tf: TaskFile, *,
                      digest: str = "", headers: dict[str, str] | None = None
                      ) -> web.StreamResponse:
    """Answer ``request`` (Range honoured) from the task's pieces as they land. A failure
    after the headers went out cuts the connection, so the client sees a short body; one
    before raises ``TaskUnavailable``."""
    total, piece_length = tf.meta.content_length, tf.meta.piece_length
    try:
        wanted = parse_range(request.headers.get("Range", ""), total)
    except ValueError as exc:
        return web.Response(status=416, text=f"{exc}\n",
                            headers={"Content-Range": f"bytes */{total}"})
    start, stop = wanted or (0, total)
    response = web.StreamResponse(status=206 if wanted else 200, headers=headers)
    response.content_length = stop - start
    response.content_type = "application/octet-stream"
    response.headers["Accept-Ranges"] = "bytes"
    if wanted:
        response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{total}"
    try:
        fd = os.open(tf.data_path, os.O_RDONLY)  # ours: a task removed later stays readable
    except FileNotFoundError:
        raise TaskUnavailable(download.error or "the task was removed") from None
    try:
        await response.prepare(request)
        # An empty blob has no piece, but still the one "final" check against its digest.
        for piece in range(start // piece_length, max((stop - 1) // piece_length + 1, 1)):
            try:
                await _piece_ready(download, tf, piece, digest)
            except TaskUnavailable as exc:
                log.warning("cut %s %s: %s", request.method, request.path, exc)
                if request.transport is not None:
                    request.transport.abort()
                return response
            offset, length = piece_range(piece, total, piece_length)
            position, end = max(offset, start), min(offset + length, stop)
            while position < end:
                data = await to_thread.run_sync(os.pread, fd, min(CHUNK, end - position),
                                                position)
                if not data:
                    raise OSError(f"task file {tf.data_path} ends before byte {end}")
                await response.write(data)
                position += len(data)
        await response.write_eof()
        return response
    finally:
        os.close(fd)

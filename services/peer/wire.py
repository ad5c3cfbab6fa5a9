"""Compression on the wire: a parent sends a piece zstd-compressed when the child accepts
it (``Accept-Encoding: zstd``) and the task's bytes compress.

Whether a task's bytes compress is decided once per task, from a sample of the first range
asked of it: already-compressed content (gzip or zstd image layers, archives, most model
weights) stays on the sendfile path, which costs the parent no CPU. A compressed answer
is still ``206`` with the ``Content-Range`` of the uncompressed bytes, and
``Content-Encoding: zstd`` on a chunked body, compressed block by block so no piece is held
whole; digests stay over the uncompressed bytes, which the child checks as it writes them.
"""

from __future__ import annotations

import os
from typing import BinaryIO, Final

import anyio
import zstandard
from aiohttp import web

from damselfly.services.peer.storage import TaskFile

ENCODING: Final = "zstd"
LEVEL: Final = 1  # ~10x zstd -19's speed; a text-like piece still shrinks 3-4x
SAMPLE: Final = 128 << 10
WORTH: Final = 0.8  # compressed / plain of the sample below this: the task is compressed
BLOCK: Final = 256 << 10


def accepts(request: web.Request) -> bool:
    offered = request.headers.get("Accept-Encoding", "")
    return ENCODING in (e.split(";")[0].strip() for e in offered.split(","))


class Compressibility:
    """Per task, whether its pieces are worth compressing (decided once, from a sample)."""

    def __init__(self) -> None:
        self._known: dict[str, bool] = {}

    def worth(self, tf: TaskFile, start: int, stop: int) -> bool:
        """Sampled from the task's first piece when held, else from this range when it is
        long enough; a short range of an undecided task goes out plain, deciding nothing
        (a task's last piece may be a few bytes long)."""
        known = self._known.get(tf.task_id)
        if known is None:
            if 0 in tf.bitmap:
                start, stop = 0, min(tf.meta.piece_length, tf.meta.content_length)
            size = min(SAMPLE, stop - start)
            if size < min(SAMPLE, tf.meta.content_length):
                return False
            with tf.reader() as f:
                sample = os.pread(f.fileno(), size, start)
            squeezed = zstandard.ZstdCompressor(level=LEVEL).compress(sample)
            known = self._known[tf.task_id] = len(squeezed) < WORTH * len(sample)
        return known


async def send_compressed(request: web.Request, tf: TaskFile, start: int, stop: int
                          ) -> tuple[web.StreamResponse, int]:
    """Bytes ``[start, stop)`` of the task, zstd-compressed; the response and the bytes it
    put on the wire."""
    ranged = "Range" in request.headers
    response = web.StreamResponse(status=206 if ranged else 200, headers={
        "Content-Type": "application/octet-stream", "Content-Encoding": ENCODING,
        "Vary": "Accept-Encoding"})
    if ranged:
        response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{tf.meta.content_length}"
    response.enable_chunked_encoding()
    squeeze = zstandard.ZstdCompressor(level=LEVEL).compressobj()
    sent = 0
    with tf.reader() as f:
        fd = f.fileno()
        await response.prepare(request)

        def block(at: int, n: int) -> bytes:  # read and compress in a worker thread
            return squeeze.compress(os.pread(fd, n, at))

        at = start
        while at < stop:
            n = min(BLOCK, stop - at)
            out = await anyio.to_thread.run_sync(block, at, n)
            at += n
            if out:
                await response.write(out)
                sent += len(out)
        tail = squeeze.flush()
        await response.write(tail)
        await response.write_eof()
    return response, sent + len(tail)


class Expanded:
    """A child's side: the plain bytes of a zstd body, at most a buffer's worth per read
    (a small body that expands to gigabytes is never held whole)."""

    def __init__(self, body: BinaryIO) -> None:
        self._reader = zstandard.ZstdDecompressor().stream_reader(body)

    def readinto(self, buf: memoryview) -> int:
        """0 at the end. Raises ``ValueError`` for bytes that are not a zstd stream."""
        try:
            return int(self._reader.readinto(buf))
        except zstandard.ZstdError as exc:
            raise ValueError(str(exc)) from exc

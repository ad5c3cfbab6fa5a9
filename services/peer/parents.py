"""Fetching one piece from a parent's upload server (blocking; run in worker threads).

Each worker thread keeps one keep-alive connection per parent and one small reusable buffer,
and streams the piece to the task file while hashing it, so memory stays flat.
"""

from __future__ import annotations

import hashlib
import http.client
import threading
from typing import Final, Literal
from urllib.parse import urlsplit

from damselfly.services.peer.bodyread import read_body
from damselfly.services.peer.storage import DiskFullError, TaskFile
from damselfly.services.peer.upload import HOLDERS_HEADER, OFFER_HEADER
from damselfly.services.peer.wire import ENCODING, Expanded

CHUNK: Final = 1 << 16
"""Small enough that the buffer stays in the CPU cache between recv, hash and write: with
1 MiB buffers the child spent twice the CPU per byte (measured with bench_peer)."""

FailureKind = Literal["missing", "busy", "spread", "failed"]


class PieceError(Exception):
    """A parent could not serve a piece: it lacks it (416/404), is busy (503), sent it to
    another child (429: a seed's super-seeding; ``retry_after`` seconds, and the pieces it
    ``offer``s instead) or failed."""

    def __init__(self, kind: FailureKind, reason: str, retry_after: float = 0.0,
                 offer: tuple[int, ...] = ()) -> None:
        super().__init__(reason)
        self.kind = kind
        self.retry_after = retry_after
        self.offer = offer


class ParentClient:
    def __init__(self, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self._local = threading.local()

    def _connection(self, netloc: str) -> http.client.HTTPConnection:
        conns: dict[str, http.client.HTTPConnection] = self._local.__dict__.setdefault("conns", {})
        if netloc not in conns:
            conns[netloc] = http.client.HTTPConnection(netloc, timeout=self.timeout)
        return conns[netloc]

    def _drop(self, netloc: str) -> None:
        conn = self._local.__dict__.get("conns", {}).pop(netloc, None)
        if conn is not None:
            conn.close()

    def fetch(self, upload_url: str, task_id: str, token: str, offset: int, length: int,
              tf: TaskFile, holders: int = 1) -> str:
        """Write bytes ``[offset, offset+length)`` from the parent into ``tf``; return their
        ``sha256:<hex>``. ``holders``: how many parents this child knows to hold them (the
        parent serves the rarest first). Raises ``PieceError``, or ``DiskFullError`` when
        the disk is full."""
        parts = urlsplit(upload_url)
        path = f"{parts.path.rstrip('/')}/v1/tasks/{task_id}/content"
        headers = {"Range": f"bytes={offset}-{offset + length - 1}",
                   "Authorization": f"Bearer {token}", "Accept-Encoding": ENCODING,
                   HOLDERS_HEADER: str(holders)}
        for attempt in range(2):
            conn = self._connection(parts.netloc)
            reused = conn.sock is not None
            try:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                self._drop(parts.netloc)
                if reused and attempt == 0:
                    continue  # the parent closed an idle keep-alive connection: reconnect once
                raise PieceError("failed", f"parent {parts.netloc}: {exc!r}") from exc
            except (OSError, http.client.HTTPException) as exc:
                self._drop(parts.netloc)
                raise PieceError("failed", f"parent {parts.netloc}: {exc!r}") from exc
            try:
                return self._receive(resp, offset, length, tf)
            except PieceError as exc:
                if exc.kind == "failed":
                    self._drop(parts.netloc)
                raise
            except DiskFullError:
                self._drop(parts.netloc)
                raise
            except (OSError, http.client.HTTPException) as exc:
                self._drop(parts.netloc)
                raise PieceError("failed", f"parent {parts.netloc}: {exc!r}") from exc
        raise AssertionError("unreachable")

    def _receive(self, resp: http.client.HTTPResponse, offset: int, length: int,
                 tf: TaskFile) -> str:
        if resp.status != 206:
            resp.read()
            kind: FailureKind = ("missing" if resp.status in (404, 416)
                                 else "busy" if resp.status == 503
                                 else "spread" if resp.status == 429 else "failed")
            try:
                retry_after = float(resp.headers.get("Retry-After", "0"))
                offer = tuple(int(n) for n in resp.headers.get(OFFER_HEADER, "").split(",")
                              if n)
            except ValueError:
                retry_after, offer = 0.0, ()
            raise PieceError(kind, f"parent answered {resp.status} {resp.reason}", retry_after,
                             offer)
        buf: memoryview | None = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = memoryview(bytearray(CHUNK))
        if resp.getheader("Content-Encoding", "") == ENCODING:
            return self._receive_compressed(resp, offset, length, tf, buf)
        digest = hashlib.sha256()
        done = 0
        while done < length:
            n = read_body(resp, buf[: min(CHUNK, length - done)])
            if n == 0:
                raise PieceError("failed", f"parent closed the connection after {done} "
                                           f"of {length} bytes")
            digest.update(buf[:n])
            tf.write(offset + done, buf[:n])
            done += n
        return f"sha256:{digest.hexdigest()}"

    @staticmethod
    def _receive_compressed(resp: http.client.HTTPResponse, offset: int, length: int,
                            tf: TaskFile, buf: memoryview) -> str:
        """A zstd body (``wire.py``): the plain bytes are hashed and written as they come,
        a buffer at a time, and a body that expands past the piece is refused there."""
        plain = Expanded(resp)
        digest = hashlib.sha256()
        done = 0
        try:
            while n := plain.readinto(buf[: min(len(buf), length - done + 1)]):
                if done + n > length:
                    raise PieceError("failed", f"parent sent more than the {length} bytes "
                                               "asked for")
                digest.update(buf[:n])
                tf.write(offset + done, buf[:n])
                done += n
        except ValueError as exc:
            raise PieceError("failed", f"parent sent a broken zstd stream: {exc}") from exc
        if done != length:
            raise PieceError("failed", f"parent's zstd stream ended after {done} of {length} "
                                       "bytes")
        return f"sha256:{digest.hexdigest()}"


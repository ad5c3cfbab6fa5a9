"""Reading an HTTP body a buffer at a time, waking once per buffer instead of per packet.

On a thin link each arriving packet woke the reading thread for a ``poll``, a ``recv`` and
a turn at the GIL, which cost more CPU than the bytes themselves (N=10 shaped swarm:
children's CPU 19.9 -> 8.7 CPU-s). ``SO_RCVLOWAT`` makes the kernel wake the reader only
when a whole buffer has arrived — but ``poll`` honours that mark whatever the read asks for,
so it is set only while the socket still has at least that much of the body to come (up to
the buffered reader's 8 KiB may already sit above the socket), and is back to 1 before the
body ends, so the next response's headers on a kept-alive connection are read as they come.
Only where segments are small (a real link's 1,448 bytes, not loopback's 32 KiB): with big
segments a reader waiting for its mark and a sender waiting for a window a whole segment
wide can wait on each other until the socket times out (about one read in a thousand on
loopback hung for the socket's 5 s), and big segments wake the reader seldom anyway.
"""

from __future__ import annotations

import http.client
import io
import socket
from typing import Final

READER_BUFFER: Final = io.DEFAULT_BUFFER_SIZE
"""What ``http.client``'s buffered reader may hold of a body beyond what it returned."""
SEGMENTS_PER_MARK: Final = 8
"""A mark is set only when at least this many of the connection's segments fill it."""


def read_body(resp: http.client.HTTPResponse, buf: memoryview) -> int:
    """``resp.readinto(buf)``, sleeping until ``buf`` can be filled at once when the rest of
    the body allows it."""
    sock = _socket_of(resp)
    if sock is None:
        return resp.readinto(buf)
    marked = _left(resp) >= len(buf) + READER_BUFFER and _small_segments(sock, len(buf))
    _wake_at(sock, len(buf) if marked else 1)
    try:
        return resp.readinto(buf)
    finally:
        if _left(resp) < len(buf) + READER_BUFFER:
            _wake_at(sock, 1)


def _left(resp: http.client.HTTPResponse) -> int:
    return resp.length or 0  # None: chunked or until close, so never a mark


def _socket_of(resp: http.client.HTTPResponse) -> socket.socket | None:
    raw = getattr(resp.fp, "raw", None)
    sock = getattr(raw, "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


def _small_segments(sock: socket.socket, size: int) -> bool:
    mss = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
    return 0 < mss * SEGMENTS_PER_MARK <= size


def _wake_at(sock: socket.socket, nbytes: int) -> None:
    if sock.fileno() >= 0:  # the body's last read closes a connection that will not be kept
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, nbytes)

"""Reading bodies a buffer at a time (SO_RCVLOWAT) never waits for bytes that will not come:
on connections with a real link's segment size (where the mark is set) and with loopback's
(where it is not, since it could wait on the sender)."""

from __future__ import annotations

import http.client
import os
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from damselfly.services.peer.bodyread import (
    READER_BUFFER,
    _small_segments,
    read_body,
)

BUF = 1 << 16
# Lengths around the edges: the old mark (a buffer whenever a buffer was left) hung on a
# body of a buffer plus a little, part of which the reader held after the headers.
LENGTHS = [1, BUF - 1, BUF, BUF + 4096, BUF + READER_BUFFER, 3 * BUF + 17, 8 * BUF]


class _Bodies(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = _body(int(self.path.strip("/")))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        if self.headers.get("Connection") == "close":
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _body(n: int) -> bytes:
    return (os.urandom(16) * (n // 16 + 1))[:n] if n else b""


@pytest.fixture
def server() -> Iterator[int]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Bodies)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


@pytest.fixture(params=[1400, None], ids=["link-segments", "loopback-segments"])
def connect(request: pytest.FixtureRequest, server: int
            ) -> Iterator[Callable[[], http.client.HTTPConnection]]:
    """New connections to the server; with a segment size set, as a shaped link has."""
    opened: list[http.client.HTTPConnection] = []

    def new() -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection("127.0.0.1", server, timeout=5)
        if request.param is None:
            conn.connect()
        else:
            sock = socket.socket()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, request.param)
            sock.settimeout(5)
            sock.connect(("127.0.0.1", server))
            conn.sock = sock
        opened.append(conn)
        return conn

    yield new
    for conn in opened:
        conn.close()


def test_the_mark_is_set_on_a_links_segments_and_not_on_loopbacks(server: int) -> None:
    link = socket.socket()
    link.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1400)
    with link, socket.create_connection(("127.0.0.1", server)) as loopback:
        link.connect(("127.0.0.1", server))
        assert _small_segments(link, BUF)
        assert not _small_segments(loopback, BUF)  # 64 KiB MTU: segments of 32 KiB and more


def _read_all(resp: http.client.HTTPResponse) -> int:
    buf = memoryview(bytearray(BUF))
    got = 0
    while n := read_body(resp, buf):
        got += n
    return got


def test_every_length_is_read_whole_on_one_kept_alive_connection(
        connect: Callable[[], http.client.HTTPConnection]) -> None:
    conn = connect()
    for _ in range(20):  # a rare hang (loopback's, with a mark) would show in 20 rounds
        for length in LENGTHS:  # a hang would end in TimeoutError after 5 s
            conn.request("GET", f"/{length}")
            resp = conn.getresponse()
            assert _read_all(resp) == length


def test_a_body_that_ends_the_connection_is_read_whole(
        connect: Callable[[], http.client.HTTPConnection]) -> None:
    for length in LENGTHS:
        conn = connect()
        conn.request("GET", f"/{length}", headers={"Connection": "close"})
        resp = conn.getresponse()
        assert _read_all(resp) == length

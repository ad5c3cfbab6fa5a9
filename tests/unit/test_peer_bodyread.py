"""Reading bodies a buffer at a time (SO_RCVLOWAT) never waits for bytes that will not come."""

from __future__ import annotations

import http.client
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from damselfly.services.peer.bodyread import READER_BUFFER, read_body

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


def _read_all(resp: http.client.HTTPResponse) -> int:
    buf = memoryview(bytearray(BUF))
    got = 0
    while n := read_body(resp, buf):
        got += n
    return got


def test_every_length_is_read_whole_on_one_kept_alive_connection(server: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=5)
    for length in LENGTHS:  # a hang would end in TimeoutError after 5 s
        conn.request("GET", f"/{length}")
        resp = conn.getresponse()
        assert _read_all(resp) == length
    conn.close()


def test_a_body_that_ends_the_connection_is_read_whole(server: int) -> None:
    for length in LENGTHS:
        conn = http.client.HTTPConnection("127.0.0.1", server, timeout=5)
        conn.request("GET", f"/{length}", headers={"Connection": "close"})
        resp = conn.getresponse()
        assert _read_all(resp) == length
        conn.close()

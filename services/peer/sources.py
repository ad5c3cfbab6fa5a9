"""Back-to-source: where the bytes come from when no peer has them.

A ``Source`` opens a byte range of a URL and returns a blocking stream (the downloader runs
it in a worker thread, so plug-ins for hdfs:// or oci:// may use blocking SDKs).
``origins.Sources`` maps URL schemes to them: http(s), file and s3 (``s3.py``).
"""

from __future__ import annotations

import http.client
import os
import re
import ssl
from collections.abc import Callable, Mapping
from typing import Final, Protocol
from urllib.parse import unquote, urljoin, urlsplit

from damselfly.events.secrets import public_headers
from damselfly.services.peer.bodyread import read_body

MAX_REDIRECTS: Final = 5
_CONTENT_RANGE: Final = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class SourceError(Exception):
    """The origin failed. ``transient`` errors (5xx, 429, resets, timeouts) are worth a retry."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class OriginStatusError(SourceError):
    """The origin answered with a status that carries no content, and this body."""

    def __init__(self, message: str, *, status: int, body: bytes) -> None:
        super().__init__(message, transient=status >= 500 or status == 429)
        self.status, self.body = status, body


class SourceStream(Protocol):
    total_length: int
    """The whole content's length, -1 when the origin did not say."""
    start: int
    """Offset of the first byte this stream yields (0 when the origin ignored the range)."""

    def readinto(self, buf: memoryview) -> int:
        """Fill ``buf`` with the next bytes; 0 at the end. Raises ``SourceError``."""

    def close(self) -> None: ...


class Source(Protocol):
    def open(self, url: str, headers: Mapping[str, str], start: int = 0,
             end: int = -1) -> SourceStream:
        """Bytes ``[start, end)`` of ``url`` (``end`` -1: to the end). Raises ``SourceError``."""


class _HttpStream:
    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse,
                 total_length: int, start: int, url: str) -> None:
        self._conn, self._resp, self._url = conn, resp, url
        self.total_length, self.start = total_length, start

    def readinto(self, buf: memoryview) -> int:
        try:
            return read_body(self._resp, buf)
        except (OSError, http.client.HTTPException) as exc:
            raise SourceError(f"reading {self._url} failed: {exc!r}", transient=True) from exc

    def close(self) -> None:
        self._conn.close()




def origin_of(url: str) -> tuple[str, str, int | None]:
    """A URL's scheme, host and port (the scheme's default when it names none)."""
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or {
        "http": 80, "https": 443}.get(parts.scheme)


PrepareHeaders = Callable[[str, dict[str, str]], dict[str, str]]
"""A request's URL and headers → the headers to send (a signing source signs here)."""
MAX_ERROR_BODY: Final = 64 << 10


class HttpSource:
    """http:// and https:// with request headers, Range and redirects. ``prepare`` gives the
    headers of each request, after Range and again after every redirect."""

    def __init__(self, timeout: float = 30.0, prepare: PrepareHeaders | None = None) -> None:
        self.timeout = timeout
        self._prepare = prepare

    def open(self, url: str, headers: Mapping[str, str], start: int = 0,
             end: int = -1) -> SourceStream:
        request_headers = dict(headers)
        if start > 0 or end >= 0:
            request_headers["Range"] = f"bytes={start}-{end - 1 if end >= 0 else ''}"
        for _ in range(MAX_REDIRECTS + 1):
            conn, resp = self._get(url, self._prepare(url, request_headers) if self._prepare
                                   else request_headers)
            if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
                conn.close()
                target = urljoin(url, resp.getheader("Location", ""))
                if origin_of(target) != origin_of(url):  # e.g. a registry's blob sent to S3
                    request_headers = public_headers(request_headers)
                url = target
                continue
            return self._stream(conn, resp, url)
        raise SourceError(f"more than {MAX_REDIRECTS} redirects from {url}", transient=False)

    def _get(self, url: str, headers: dict[str, str]
             ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        parts = urlsplit(url)
        kind = {"http": http.client.HTTPConnection, "https": http.client.HTTPSConnection}.get(
            parts.scheme)
        if kind is None or not parts.hostname:
            raise SourceError(f"not an http(s) URL: {url}", transient=False)
        conn = kind(parts.hostname, parts.port, timeout=self.timeout)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request("GET", path, headers=headers)
            return conn, conn.getresponse()
        except ssl.SSLCertVerificationError as exc:  # retrying cannot make it trusted
            conn.close()
            raise SourceError(f"origin {parts.netloc}: {exc.verify_message or exc}",
                              transient=False) from exc
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise SourceError(f"origin {parts.netloc} failed: {exc!r}", transient=True) from exc

    @staticmethod
    def _stream(conn: http.client.HTTPConnection, resp: http.client.HTTPResponse,
                url: str) -> SourceStream:
        if resp.status == 206:
            match = _CONTENT_RANGE.match(resp.getheader("Content-Range", ""))
            if match is None:
                conn.close()
                raise SourceError(f"origin sent 206 without a Content-Range for {url}",
                                  transient=False)
            total = -1 if match[3] == "*" else int(match[3])
            return _HttpStream(conn, resp, total, int(match[1]), url)
        if resp.status == 200:
            length = resp.getheader("Content-Length")
            return _HttpStream(conn, resp, int(length) if length else -1, 0, url)
        try:
            body = resp.read(MAX_ERROR_BODY)
        except (OSError, http.client.HTTPException):
            body = b""
        finally:
            conn.close()
        raise OriginStatusError(f"origin answered {resp.status} {resp.reason} for {url}",
                                status=resp.status, body=body)


class _FileStream:
    def __init__(self, path: str, start: int, end: int) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - the stream owns it until close()
        self.total_length = os.fstat(self._file.fileno()).st_size
        self.start = start
        self._left = (self.total_length if end < 0 else min(end, self.total_length)) - start
        self._file.seek(start)

    def readinto(self, buf: memoryview) -> int:
        n = self._file.readinto(buf[: max(0, min(len(buf), self._left))])
        self._left -= n
        return n

    def close(self) -> None:
        self._file.close()


class FileSource:
    """file:// URLs: how a local file is imported into the swarm."""

    def open(self, url: str, headers: Mapping[str, str], start: int = 0,
             end: int = -1) -> SourceStream:
        path = unquote(urlsplit(url).path)
        try:
            return _FileStream(path, start, end)
        except OSError as exc:
            raise SourceError(f"cannot read {path}: {exc.strerror}", transient=False) from exc

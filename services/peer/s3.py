"""``s3://BUCKET/KEY`` origins: S3, MinIO, Ceph RGW and other S3-compatible stores.

Requests are path-style GETs to one endpoint, signed with SigV4 when the daemon has keys and
anonymous otherwise, sent through ``HttpSource`` (so Range, resume and retries are those of
http). Everything is read from the daemon's environment, once, at start.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http.client import responses
from typing import Final
from urllib.parse import quote, unquote, urlsplit

from damselfly.services.peer.sigv4 import EMPTY_SHA256, Credentials, sign
from damselfly.services.peer.sources import HttpSource, OriginStatusError, SourceError, SourceStream

DEFAULT_REGION: Final = "us-east-1"
# S3's codes for "slow down and ask again" that do not come with a 5xx status.
_TRANSIENT_CODES: Final = frozenset({"SlowDown", "RequestTimeout"})


@dataclass(frozen=True)
class S3Config:
    endpoint: str
    region: str
    credentials: Credentials | None
    """None: anonymous requests."""


def _env(environ: Mapping[str, str], *names: str) -> str:
    return next((environ[n] for n in names if environ.get(n)), "")


def s3_config(environ: Mapping[str, str]) -> S3Config:
    """The endpoint, region and keys the AWS CLI would use from these variables. Raises
    ``ValueError`` when only one of the two keys is set."""
    region = _env(environ, "AWS_REGION", "AWS_DEFAULT_REGION") or DEFAULT_REGION
    endpoint = _env(environ, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL") \
        or f"https://s3.{region}.amazonaws.com"
    key_id, secret = _env(environ, "AWS_ACCESS_KEY_ID"), _env(environ, "AWS_SECRET_ACCESS_KEY")
    if bool(key_id) != bool(secret):
        raise ValueError("S3 origins: set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                         "or neither for anonymous requests")
    credentials = Credentials(key_id, secret, _env(environ, "AWS_SESSION_TOKEN")) \
        if key_id else None
    return S3Config(endpoint.rstrip("/"), region, credentials)


def object_url(endpoint: str, url: str) -> str:
    """``s3://bucket/key`` → the path-style URL of the object at ``endpoint``. Raises
    ``SourceError`` for a URL without a bucket or key."""
    parts = urlsplit(url)
    key = unquote(parts.path.removeprefix("/"))
    if parts.scheme != "s3" or not parts.netloc or not key:
        raise SourceError(f"{url}: want s3://BUCKET/KEY", transient=False)
    query = f"?{parts.query}" if parts.query else ""  # e.g. versionId
    return f"{endpoint}/{quote(parts.netloc, safe='')}/{quote(key)}{query}"


def s3_error(url: str, status: int, body: bytes) -> SourceError:
    """One line from S3's XML error: ``s3://b/k: NoSuchKey (404)``."""
    try:
        code = ET.fromstring(body).findtext("Code") or ""
    except ET.ParseError:
        code = ""
    code = code or responses.get(status, "error")
    transient = status >= 500 or status == 429 or code in _TRANSIENT_CODES
    return SourceError(f"{url}: {code} ({status})", transient=transient)


class S3Source:
    """``s3://`` objects, through an ``HttpSource`` that signs each request it sends."""

    def __init__(self, config: S3Config, timeout: float = 30.0) -> None:
        self.config = config
        self._http = HttpSource(timeout, prepare=self._sign)

    def open(self, url: str, headers: Mapping[str, str], start: int = 0,
             end: int = -1) -> SourceStream:
        """Request ``headers`` are not sent: S3 requests carry only what they sign."""
        try:
            return self._http.open(object_url(self.config.endpoint, url), {}, start, end)
        except OriginStatusError as exc:
            raise s3_error(url, exc.status, exc.body) from exc

    def _sign(self, url: str, headers: dict[str, str]) -> dict[str, str]:
        credentials = self.config.credentials
        if credentials is None or not url.startswith(f"{self.config.endpoint}/"):
            return headers  # anonymous, or redirected elsewhere: the keys stay here
        return sign("GET", url, {**headers, "x-amz-content-sha256": EMPTY_SHA256}, credentials,
                    region=self.config.region, service="s3", now=datetime.now(UTC))

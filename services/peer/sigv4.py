"""AWS Signature Version 4 for requests signed in headers. Pure: the clock is an argument.

Paths are canonicalised as S3 wants them: as sent (already percent-encoded), not encoded a
second time as other AWS services expect.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final
from urllib.parse import parse_qsl, quote, urlsplit

EMPTY_SHA256: Final = hashlib.sha256(b"").hexdigest()
ALGORITHM: Final = "AWS4-HMAC-SHA256"


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(default="", repr=False)


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signing_key(secret_access_key: str, date: str, region: str, service: str) -> bytes:
    """The key of one day, region and service (``date`` as YYYYMMDD)."""
    key = _hmac(f"AWS4{secret_access_key}".encode(), date)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    return key


def _canonical_query(query: str) -> str:
    pairs = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~"))
                   for k, v in parse_qsl(query, keep_blank_values=True))
    return "&".join(f"{k}={v}" for k, v in pairs)


def canonical_request(method: str, url: str, headers: Mapping[str, str],
                      payload_hash: str) -> tuple[str, str]:
    """The canonical request and its signed-headers list; every header in ``headers`` is
    signed."""
    parts = urlsplit(url)
    canonical = {name.lower(): " ".join(value.split()) for name, value in headers.items()}
    signed = ";".join(sorted(canonical))
    lines = [method, parts.path or "/", _canonical_query(parts.query),
             *(f"{name}:{canonical[name]}" for name in sorted(canonical)), "", signed,
             payload_hash]
    return "\n".join(lines), signed


def sign(method: str, url: str, headers: Mapping[str, str], credentials: Credentials, *,
         region: str, service: str, now: datetime,
         payload_hash: str = EMPTY_SHA256) -> dict[str, str]:
    """``headers`` plus Host (when missing), X-Amz-Date, X-Amz-Security-Token (with a session
    token) and the Authorization that signs them all. ``now`` must be in UTC."""
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    signed_headers = dict(headers)
    if not any(name.lower() == "host" for name in signed_headers):
        signed_headers["Host"] = urlsplit(url).netloc
    signed_headers["X-Amz-Date"] = amz_date
    if credentials.session_token:
        signed_headers["X-Amz-Security-Token"] = credentials.session_token
    request, signed = canonical_request(method, url, signed_headers, payload_hash)
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join([ALGORITHM, amz_date, scope,
                         hashlib.sha256(request.encode()).hexdigest()])
    key = signing_key(credentials.secret_access_key, amz_date[:8], region, service)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    signed_headers["Authorization"] = (f"{ALGORITHM} Credential={credentials.access_key_id}/"
                                       f"{scope}, SignedHeaders={signed}, Signature={signature}")
    return signed_headers

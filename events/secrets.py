"""Keeping credentials out of the log: headers that carry them are never published."""

from __future__ import annotations

from typing import Final

SENSITIVE_HEADERS: Final = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-registry-auth",
     "x-amz-security-token", "x-api-key"}
)


def public_headers(headers: dict[str, str]) -> dict[str, str]:
    """The headers that may be written to a stream: every credential-bearing one removed."""
    return {k: v for k, v in headers.items() if k.lower() not in SENSITIVE_HEADERS}

"""Keeping credentials out of the log, in one place for every service.

Headers that carry credentials are never published; when a service must pass one on (a
preheat's registry login), it is sealed with AES-GCM under a key derived from the cluster
secret, so only services holding that secret (the manager, the daemons) can open it.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SENSITIVE_HEADERS: Final = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-registry-auth",
     "x-amz-security-token", "x-api-key", "private-token", "x-auth-token"}
)
"""Never written to a stream, never sent on to another origin after a redirect (as curl
and requests do: a presigned object-store URL rejects a second credential)."""
SENSITIVE_SUFFIXES: Final = ("-token", "-secret", "-key", "-password", "-credential",
                             "-credentials", "-auth")
"""And any header whose name ends so (``X-Goog-Api-Key``, ``Job-Token``, ``X-Hub-Secret``)."""

SECRET_ENV: Final = "DAMSELFLY_CLUSTER_SECRET"
PREFIX: Final = "aesgcm1."


def is_sensitive(header: str) -> bool:
    name = header.lower()
    return name in SENSITIVE_HEADERS or name.endswith(SENSITIVE_SUFFIXES)


def public_url(url: str) -> str:
    """``url`` without a ``user:password@`` part, for the log: the peer that was given it
    keeps using it to reach the origin, no other peer ever sees it."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def public_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers that may be written to a stream: every credential-bearing one removed."""
    return {k: v for k, v in headers.items() if not is_sensitive(k)}


def sensitive_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The credential-bearing headers only: what ``public_headers`` leaves out."""
    return {k: v for k, v in headers.items() if is_sensitive(k)}


def read_secret(secret_file: Path | None) -> str:
    """The cluster secret from ``secret_file`` or ``DAMSELFLY_CLUSTER_SECRET``. Raises
    ``RuntimeError`` when neither holds one."""
    if secret_file is not None:
        value = secret_file.read_text().strip()
    else:
        value = os.environ.get(SECRET_ENV, "").strip()
    if not value:
        raise RuntimeError(f"no cluster secret: set {SECRET_ENV} or pass --secret-file")
    return value


class SealError(ValueError):
    """A sealed value is damaged or was sealed under another secret."""


def derive_key(secret: str, purpose: str) -> bytes:
    """A 256-bit key for one purpose, so one secret never keys two different uses."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=f"damselfly {purpose}".encode()).derive(secret.encode())


def seal(secret: str, value: Mapping[str, object]) -> str:
    """Encrypt and authenticate ``value``; empty values seal to ``""``."""
    if not value:
        return ""
    nonce = os.urandom(12)
    box = AESGCM(derive_key(secret, "credentials")).encrypt(nonce, msgspec.json.encode(value), None)
    return PREFIX + base64.urlsafe_b64encode(nonce + box).decode()


def open_sealed(secret: str, sealed: str) -> dict[str, object]:
    """The value ``seal`` sealed; ``{}`` for ``""``. Raises ``SealError``."""
    if not sealed:
        return {}
    if not sealed.startswith(PREFIX):
        raise SealError("sealed credentials in an unknown format")
    try:
        raw = base64.urlsafe_b64decode(sealed[len(PREFIX):])
        plain = AESGCM(derive_key(secret, "credentials")).decrypt(raw[:12], raw[12:], None)
        value = msgspec.json.decode(plain)
    except (binascii.Error, InvalidTag, ValueError, msgspec.DecodeError):
        raise SealError("sealed credentials cannot be opened with this cluster secret") from None
    if not isinstance(value, dict):
        raise SealError("sealed credentials are not an object")
    return value

"""Sealing credentials for the event log: AES-GCM under a key derived from the cluster
secret, so only services holding that secret (the manager, the daemons) can open them."""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from typing import Final

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PREFIX: Final = "aesgcm1."


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

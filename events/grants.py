"""Upload grants: the scheduler's signed word that one peer may fetch one task from one host.

A grant is ``<payload>.<signature>``, both base64url without padding: the payload is the
JSON array ``[task_id, child peer_id, parent host_id, expires_at]`` (whole seconds), the
signature Ed25519 over the payload's base64 text, by the schedulers' key
(``DAMSELFLY_GRANT_KEY``, a PEM file only schedulers hold). A daemon holds only the public
key (``DAMSELFLY_GRANT_PUBKEY``), so no daemon can make one, and a parent serves a task only
to a child the scheduler assigned it to (``docs/protocol.md``, "Piece transfer").
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

KEY_ENV: Final = "DAMSELFLY_GRANT_KEY"
PUBKEY_ENV: Final = "DAMSELFLY_GRANT_PUBKEY"
GRANT_TTL: Final = 24 * 3600.0
"""How long a grant lets a child fetch from its parent: longer than any download."""
CHECKED_CACHE: Final = 4096
"""Grants whose signature a parent has checked (a child sends the same one with every
request, and an Ed25519 check costs about 20 HMACs)."""


class GrantError(ValueError):
    """A grant is missing, malformed, forged, expired or for another task or host."""


def _key_file(env: str) -> Path | None:
    path = os.environ.get(env, "")
    return Path(path) if path else None


def _load(path: Path, private: bool) -> object:
    """The key in a PEM file. Raises ``RuntimeError`` for an unreadable or wrong file."""
    kind, want = ("private", Ed25519PrivateKey) if private else ("public", Ed25519PublicKey)
    try:
        pem = path.read_bytes()
        key = (serialization.load_pem_private_key(pem, password=None) if private
               else serialization.load_pem_public_key(pem))
    except OSError as exc:
        raise RuntimeError(f"grant key {path}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise RuntimeError(f"grant key {path}: not a PEM {kind} key ({exc})") from None
    if not isinstance(key, want):
        raise RuntimeError(f"grant key {path}: not an Ed25519 key")
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class GrantSigner:
    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def from_env(cls) -> GrantSigner | None:
        """The key ``DAMSELFLY_GRANT_KEY`` names, or None when it names none."""
        path = _key_file(KEY_ENV)
        return cls.from_file(path) if path else None

    @classmethod
    def from_file(cls, path: Path) -> GrantSigner:
        """Raises ``RuntimeError`` for an unreadable or wrong file."""
        key = _load(path, private=True)
        assert isinstance(key, Ed25519PrivateKey)
        return cls(key)

    def grant(self, task_id: str, peer_id: str, host_id: str, expires_at: float) -> str:
        claims = [task_id, peer_id, host_id, int(expires_at)]
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return f"{payload}.{_b64(self._key.sign(payload.encode()))}"


class GrantVerifier:
    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key
        self._checked: dict[str, tuple[str, str, str, int]] = {}

    @classmethod
    def from_env(cls) -> GrantVerifier | None:
        """The public key ``DAMSELFLY_GRANT_PUBKEY`` names, or None when it names none.
        Raises ``RuntimeError`` for an unreadable or wrong file."""
        path = _key_file(PUBKEY_ENV)
        if path is None:
            return None
        key = _load(path, private=False)
        assert isinstance(key, Ed25519PublicKey)
        return cls(key)

    def check(self, grant: str, task_id: str, host_id: str, now: float) -> str:
        """The child's peer id, if ``grant`` lets it fetch ``task_id`` from ``host_id`` at
        ``now``. Raises ``GrantError`` with the reason."""
        task, peer, host, expires = self._claims(grant)
        if task != task_id:
            raise GrantError("the upload grant is for another task")
        if host != host_id:
            raise GrantError("the upload grant is for another parent")
        if expires <= now:
            raise GrantError("the upload grant has expired: ask the scheduler again")
        return peer

    def _claims(self, grant: str) -> tuple[str, str, str, int]:
        if claims := self._checked.get(grant):
            return claims
        payload, dot, signature = grant.partition(".")
        try:
            if not dot:
                raise ValueError("no signature")
            self._key.verify(_unb64(signature), payload.encode())
            task, peer, host, expires = json.loads(_unb64(payload))
            claims = (str(task), str(peer), str(host), int(expires))
        except InvalidSignature:
            raise GrantError("the upload grant is not the scheduler's") from None
        except (ValueError, TypeError, binascii.Error):
            raise GrantError("malformed upload grant") from None
        if len(self._checked) >= CHECKED_CACHE:
            self._checked.clear()
        self._checked[grant] = claims
        return claims

"""Upload grants: the scheduler signs, a parent checks, a daemon cannot make one."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from damselfly.events.grants import (
    KEY_ENV,
    PUBKEY_ENV,
    GrantError,
    GrantSigner,
    GrantVerifier,
)
from damselfly.services.launcher.up import write_grant_keys

TASK = "a" * 64


def keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[GrantSigner, GrantVerifier]:
    key, pub = tmp_path / "grant.key", tmp_path / "grant.pub"
    write_grant_keys(key, pub)
    monkeypatch.setenv(KEY_ENV, str(key))
    monkeypatch.setenv(PUBKEY_ENV, str(pub))
    signer, verifier = GrantSigner.from_env(), GrantVerifier.from_env()
    assert signer is not None and verifier is not None
    return signer, verifier


def test_a_grant_names_its_child_and_holds_only_for_its_task_host_and_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    signer, verifier = keys(tmp_path, monkeypatch)
    grant = signer.grant(TASK, "child-1", "host-a", 1000.0)
    assert verifier.check(grant, TASK, "host-a", 999.0) == "child-1"
    assert verifier.check(grant, TASK, "host-a", 999.5) == "child-1"  # checked once, kept
    for task, host, now, reason in ((TASK, "host-b", 999.0, "another parent"),
                                    ("b" * 64, "host-a", 999.0, "another task"),
                                    (TASK, "host-a", 1000.0, "expired")):
        with pytest.raises(GrantError, match=reason):
            verifier.check(grant, task, host, now)
    forged = GrantSigner(Ed25519PrivateKey.generate()).grant(TASK, "child-1", "host-a", 1000.0)
    with pytest.raises(GrantError, match="not the scheduler's"):
        verifier.check(forged, TASK, "host-a", 999.0)
    payload, signature = grant.split(".")
    other = signer.grant(TASK, "child-2", "host-a", 1000.0).split(".")[0]
    with pytest.raises(GrantError, match="not the scheduler's"):  # claims swapped under it
        verifier.check(f"{other}.{signature}", TASK, "host-a", 999.0)
    for malformed in ("", "no-dot", f"{payload}.!!", "Zm9v.YmFy"):
        with pytest.raises(GrantError):
            verifier.check(malformed, TASK, "host-a", 999.0)


def test_keys_are_made_once_the_private_one_0600_and_a_wrong_file_is_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key, pub = tmp_path / "grant.key", tmp_path / "grant.pub"
    write_grant_keys(key, pub)
    first = key.read_bytes()
    write_grant_keys(key, pub)
    assert key.read_bytes() == first
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    monkeypatch.delenv(KEY_ENV, raising=False)
    assert GrantSigner.from_env() is None
    monkeypatch.setenv(KEY_ENV, str(pub))  # the public key where the private one belongs
    with pytest.raises(RuntimeError, match="grant key .*grant.pub: not a PEM private key"):
        GrantSigner.from_env()
    monkeypatch.setenv(PUBKEY_ENV, str(tmp_path / "missing.pub"))
    with pytest.raises(RuntimeError, match="grant key .*missing.pub: No such file"):
        GrantVerifier.from_env()

"""``damselfly init containerd``: which hosts.toml files it writes, what they say, and what
it reports when it changes them. Files only, no containerd."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from damselfly.services.peer.configfiles import apply
from damselfly.services.peer.containerd import plan
from damselfly.services.peer.oci import DOCKER_HUB

MIRROR = "http://127.0.0.1:4001"


def test_named_registries_each_get_a_mirror_with_their_own_server_as_fallback(
        tmp_path: Path) -> None:
    files = plan(tmp_path, MIRROR, ["docker.io", "http://127.0.0.1:5000", "ghcr.io"])
    assert [f.path.relative_to(tmp_path).as_posix() for f in files] == [
        "docker.io/hosts.toml", "127.0.0.1:5000/hosts.toml", "ghcr.io/hosts.toml"]
    parsed = [tomllib.loads(f.text) for f in files]
    assert [p["server"] for p in parsed] == [DOCKER_HUB, "http://127.0.0.1:5000",
                                             "https://ghcr.io"]
    assert [p["host"] for p in parsed] == [
        {MIRROR: {"capabilities": ["pull", "resolve"], "header": {"X-Dragonfly-Registry": [s]}}}
        for s in (DOCKER_HUB, "http://127.0.0.1:5000", "https://ghcr.io")]


def test_no_registry_named_means_every_registry(tmp_path: Path) -> None:
    [only] = plan(tmp_path, MIRROR, [])
    assert only.path == tmp_path / "_default" / "hosts.toml"
    assert tomllib.loads(only.text) == {"host": {MIRROR: {"capabilities": ["pull", "resolve"]}}}


def test_it_says_what_it_changed_and_keeps_what_it_replaced(tmp_path: Path) -> None:
    target = tmp_path / "ghcr.io" / "hosts.toml"
    target.parent.mkdir()
    target.write_text('server = "https://ghcr.io"\n')
    files = plan(tmp_path, MIRROR, ["ghcr.io", "quay.io"])
    assert apply(files) == [
        f"updated {target} (previous kept as hosts.toml.bak)",
        f"created {tmp_path / 'quay.io' / 'hosts.toml'}"]
    assert (target.parent / "hosts.toml.bak").read_text() == 'server = "https://ghcr.io"\n'
    assert target.read_text() == files[0].text
    assert apply(files) == [f"unchanged {f.path}" for f in files]
    assert sorted(p.name for p in target.parent.iterdir()) == ["hosts.toml", "hosts.toml.bak"]


def test_a_malformed_mirror_or_registry_is_refused_before_anything_is_written(
        tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bad registry"):
        plan(tmp_path, "ftp://127.0.0.1:4001", [])
    with pytest.raises(ValueError, match="bad registry"):
        plan(tmp_path, MIRROR, ["ghcr.io", "https://quay.io/path"])
    assert list(tmp_path.iterdir()) == []

"""damselfly init docker|podman: the mirror joins the runtime's own file, every other
setting stays, a second run changes nothing, and a broken file is one clear error."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from damselfly.services.cli.main import main
from damselfly.services.peer.runtimes import docker_config, podman_config

MIRROR = "http://127.0.0.1:4001"


def test_docker_gets_the_mirror_first_and_keeps_its_settings() -> None:
    before = json.dumps({"log-driver": "journald", "registry-mirrors": ["https://m.example"]})
    after = json.loads(docker_config(before, MIRROR))
    assert after == {"log-driver": "journald",
                     "registry-mirrors": [MIRROR, "https://m.example"]}
    assert docker_config(docker_config(before, MIRROR), MIRROR) == docker_config(before, MIRROR)
    assert json.loads(docker_config(None, MIRROR)) == {"registry-mirrors": [MIRROR]}


def test_podman_gets_a_registry_entry_with_the_mirror() -> None:
    conf = tomllib.loads(podman_config(None, MIRROR, "docker.io"))
    assert conf == {"registry": [{"location": "docker.io", "mirror": [
        {"location": "127.0.0.1:4001", "insecure": True}]}]}
    plain = tomllib.loads(podman_config(None, MIRROR, "http://10.0.0.5:5000"))
    assert plain["registry"][0]["location"] == "10.0.0.5:5000"
    assert plain["registry"][0]["insecure"] is True


def test_podman_keeps_other_settings_and_mirrors() -> None:
    before = ('unqualified-search-registries = ["docker.io"]\n'
              '[[registry]]\nlocation = "docker.io"\n'
              '[[registry.mirror]]\nlocation = "mirror.example"\n'
              '[[registry]]\nlocation = "quay.io"\nblocked = true\n')
    once = podman_config(before, MIRROR, "docker.io")
    conf = tomllib.loads(once)
    assert conf["unqualified-search-registries"] == ["docker.io"]
    hub, quay = conf["registry"]
    assert [m["location"] for m in hub["mirror"]] == ["127.0.0.1:4001", "mirror.example"]
    assert quay == {"location": "quay.io", "blocked": True}
    assert podman_config(once, MIRROR, "docker.io") == once


def test_podman_matches_a_prefix_and_refuses_a_version_1_file() -> None:
    before = ('[[registry]]\nprefix = "docker.io"\nlocation = "hub.internal"\n')
    conf = tomllib.loads(podman_config(before, MIRROR, "docker.io"))
    assert len(conf["registry"]) == 1 and conf["registry"][0]["location"] == "hub.internal"
    assert conf["registry"][0]["mirror"][0]["location"] == "127.0.0.1:4001"
    with pytest.raises(ValueError, match="version 1 registries.conf"):
        podman_config('[registries.search]\nregistries = ["docker.io"]\n', MIRROR,
                      "docker.io")


def test_the_commands_write_the_files_and_refuse_a_broken_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "registries.conf"
    assert main(["init", "podman", "--registries-conf", str(conf)]) == 0
    assert main(["init", "podman", "--registries-conf", str(conf)]) == 0
    out = capsys.readouterr().out
    assert f"created {conf}" in out and f"unchanged {conf}" in out
    daemon_json = tmp_path / "daemon.json"
    daemon_json.write_text("{not json")
    assert main(["init", "docker", "--daemon-json", str(daemon_json)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"damselfly init: {daemon_json}: the file is not valid JSON (")
    assert daemon_json.read_text() == "{not json" and len(err.splitlines()) == 1

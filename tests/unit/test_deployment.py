"""docker-compose.yml describes a deployment of real subcommands (no Docker engine here)."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest
import yaml

from damselfly.services.cli.main import build_parser

ROOT = Path(__file__).parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DAMSELFLY = {name: s for name, s in COMPOSE["services"].items() if not name.startswith("nats")}


def test_compose_has_a_three_node_jetstream_cluster_and_every_service() -> None:
    nats = [s for name, s in COMPOSE["services"].items() if name.startswith("nats")]
    assert len(nats) == 3 and all("-js" in s["command"] for s in nats)
    commands = sorted(s["command"][0] for s in DAMSELFLY.values())
    assert commands == ["daemon", "daemon", "daemon", "manager", "scheduler", "scheduler"]
    assert sum("--seed" in s["command"] for s in DAMSELFLY.values()) == 1


@pytest.mark.parametrize("name", sorted(DAMSELFLY))
def test_every_service_command_is_a_real_damselfly_subcommand(name: str) -> None:
    args = build_parser().parse_args(DAMSELFLY[name]["command"])  # exits on an unknown flag
    assert callable(args.run)
    assert args.nats.startswith("nats://")


def test_the_image_runs_damselfly() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["damselfly"]' in dockerfile
    assert "pip install" in dockerfile


def test_version_names_the_installed_distribution(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out.strip() == f"damselfly {metadata.version('damselfly')}"


def test_only_schedulers_hold_the_grant_key_and_every_daemon_the_public_one() -> None:
    for name, service in DAMSELFLY.items():
        role = service["command"][0]
        has_key = "grant_key" in service.get("secrets", [])
        assert has_key == (role == "scheduler"), name
        assert ("DAMSELFLY_GRANT_KEY" in service["environment"]) == has_key, name
        if role == "daemon":
            assert "grant_pub" in service["secrets"], name
            assert service["environment"]["DAMSELFLY_GRANT_PUBKEY"] == "/run/secrets/grant_pub"
    assert COMPOSE["secrets"]["grant_key"]["file"] == "./keys/grant.key"
    args = build_parser().parse_args(["grant-keys", "keys"])  # what the header says to run
    assert callable(args.run)


def test_every_service_keeps_streams_on_every_nats_node() -> None:
    nodes = sum(name.startswith("nats") for name in COMPOSE["services"])
    for name, service in DAMSELFLY.items():
        assert service["environment"]["DAMSELFLY_STREAM_REPLICAS"] == str(nodes), name

"""The ``damselfly`` command loads only the module of the subcommand it runs."""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest

from damselfly.services.cli.main import COMMANDS, build_parser
from damselfly.services.launcher.up import daemon_flags, service_specs


def test_the_command_table_names_every_subcommand_its_module_registers() -> None:
    registered: dict[str, str] = {}
    for module in dict.fromkeys(COMMANDS.values()):
        sub = argparse.ArgumentParser().add_subparsers()
        import_module(module).register(sub)
        registered |= {name: module for name in sub.choices}
    assert registered == COMMANDS


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_named_command_parses_with_only_its_module(command: str) -> None:
    parser = build_parser([command, "--help"])
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert command in subparsers.choices
    assert {COMMANDS[name] for name in subparsers.choices} == {COMMANDS[command]}


@pytest.mark.parametrize("command", ["daemon", "get"])
def test_the_peer_commands_never_import_duckdb_or_the_manager(command: str) -> None:
    code = ("import sys\nfrom damselfly.services.cli.main import build_parser\n"
            f"build_parser([{command!r}, '--help'])\n"
            "print(sorted(m for m in sys.modules if m == 'duckdb' or "
            "m.startswith('damselfly.services.manager')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_no_command_registers_them_all() -> None:
    parser = build_parser(["--version"])
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) == set(COMMANDS)


def test_up_hands_its_mirror_and_proxy_rules_to_every_daemon(tmp_path: Path) -> None:
    argv = ["up", "--registry-mirror", "https://registry.example:5000",
            "--proxy-rule", r"files\.pythonhosted\.org=swarm", "--proxy-rule", "maven=direct"]
    up = build_parser(argv).parse_args(argv)
    daemons = [s for s in service_specs("nats://n:4222", tmp_path, 2, daemon_flags(up))
               if s.argv[0] == "daemon"]
    assert [s.name for s in daemons] == ["seed-peer", "peer-1", "peer-2"]
    for spec in daemons:
        parsed = build_parser(spec.argv).parse_args(spec.argv)
        assert parsed.registry_mirror == "https://registry.example:5000"
        assert parsed.proxy_rule == [r"files\.pythonhosted\.org=swarm", "maven=direct"]


def test_up_starts_the_schedulers_it_is_asked_for_each_on_its_own_data_dir(
        tmp_path: Path) -> None:
    argv = ["up", "--nats-nodes", "3", "--schedulers", "3"]
    up = build_parser(argv).parse_args(argv)
    assert up.nats_nodes == 3
    specs = service_specs("nats://a:4222,nats://b:4222", tmp_path, 1, (), up.schedulers)
    schedulers = [build_parser(s.argv).parse_args(s.argv) for s in specs
                  if s.role == "scheduler"]
    assert [s.name for s in specs if s.role == "scheduler"] == [
        "scheduler", "scheduler-2", "scheduler-3"]
    assert len({s.data_dir for s in schedulers}) == 3
    assert {s.nats for s in schedulers} == {"nats://a:4222,nats://b:4222"}


def test_up_refuses_a_nats_cluster_without_a_majority_after_one_loss() -> None:
    argv = ["up", "--nats-nodes", "2"]
    with pytest.raises(SystemExit):
        build_parser(argv).parse_args(argv)

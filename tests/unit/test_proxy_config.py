"""Forward-proxy rules: ``REGEX=swarm|direct[:params]``, first match wins. Pure."""

from __future__ import annotations

import pytest

from damselfly.services.cli.main import build_parser
from damselfly.services.peer.oci import DOCKER_HUB
from damselfly.services.peer.proxy import match_rule, parse_rule, proxy_config
from damselfly.services.peer.proxy_tunnel import parse_authority


def test_rules_parse_with_their_filtered_query_parameters() -> None:
    rule = parse_rule(r"\.(jar|whl)$=swarm:X-Amz-Signature,X-Amz-Date")
    assert rule.swarm and rule.filtered_query_params == ("X-Amz-Signature", "X-Amz-Date")
    assert rule.pattern.pattern == r"\.(jar|whl)$"
    direct = parse_rule("a=b=direct")  # the last '=' splits: a regex may hold one
    assert not direct.swarm and direct.pattern.pattern == "a=b"


@pytest.mark.parametrize("text", ["nothing", "=swarm", "x=maybe", "(=swarm"])
def test_bad_rules_are_one_line_errors(text: str) -> None:
    with pytest.raises(ValueError, match="bad proxy rule") as info:
        parse_rule(text)
    assert "\n" not in str(info.value)


def test_the_first_matching_rule_wins() -> None:
    rules = proxy_config("", [r"/simple/=direct", r"\.whl=swarm", r"pypi=swarm"]).rules
    assert match_rule(rules, "http://pypi/simple/x.whl") is rules[0]
    assert match_rule(rules, "http://pypi/packages/x.whl") is rules[1]
    assert match_rule(rules, "http://maven/x.jar") is None


def test_the_default_registry_is_normalised() -> None:
    assert proxy_config("registry.local:5000", []).registry == "https://registry.local:5000"
    assert proxy_config("", []).registry == DOCKER_HUB  # what Docker's registry-mirrors pull
    with pytest.raises(ValueError, match="bad registry"):
        proxy_config("ftp://x", [])


def test_connect_targets_are_host_and_port() -> None:
    assert parse_authority("registry.example:443") == ("registry.example", 443)
    assert parse_authority("[::1]:8443") == ("::1", 8443)
    for bad in ("registry.example", ":443", "host:0", "host:https", "host:70000"):
        with pytest.raises(ValueError, match="bad CONNECT target"):
            parse_authority(bad)


def test_the_daemon_runs_the_proxy_only_when_asked_and_alone_the_port_is_4001() -> None:
    parser = build_parser()
    base = ["daemon", "--nats", "nats://127.0.0.1:4222", "--data-dir", "d"]
    assert parser.parse_args(base).proxy_port is None
    assert parser.parse_args([*base, "--proxy-port"]).proxy_port == 4001
    assert parser.parse_args([*base, "--proxy-port", "0"]).proxy_port == 0

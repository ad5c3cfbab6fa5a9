"""Two managers on one log, each projecting its own DuckDB file: both answer reads, a write
through either is an event the other sees, and a name that must be unique (a user, a
cluster, a tenant) is created once however many creates race through both."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import pytest

from tests.support.control import ROOT_PASSWORD, Manager, running_manager
from tests.support.wait import eventually

pytestmark = pytest.mark.anyio
RACERS = 4  # concurrent creates through each manager


async def test_two_managers_share_the_log_and_a_unique_name_is_created_once(
        nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_manager(nats_url, tmp_path / "a", monkeypatch) as a, \
            running_manager(nats_url, tmp_path / "b", monkeypatch) as b:
        assert a.db != b.db
        tokens: dict[int, str] = {}
        for m in (a, b):
            tokens[id(m)] = await eventually(partial(m.try_sign_in, "root", ROOT_PASSWORD))
        suffix = secrets.token_hex(4)

        # A write through one manager is read through the other.
        status, _ = await a.call("POST", "/api/v1/users", {
            "name": f"w{suffix}", "password": "password-1", "role": "guest"}, tokens[id(a)])
        assert status == 201
        await eventually(lambda: b.try_sign_in(f"w{suffix}", "password-1"))

        async def race(path: str, body: Mapping[str, object]) -> list[int]:
            async def create(m: Manager) -> int:
                status, _ = await m.call("POST", path, body, tokens[id(m)])
                return status

            return sorted(await asyncio.gather(*(create(m) for _ in range(RACERS)
                                                 for m in (a, b))))

        cluster = f"c{suffix}"
        for path, body in (
                ("/api/v1/users", {"name": f"u{suffix}", "password": "password-2"}),
                ("/api/v1/scheduler-clusters", {"id": cluster}),
                ("/api/v1/applications", {"name": f"t{suffix}"})):
            assert await race(path, body) == [201] + [409] * (2 * RACERS - 1), path

        # A deleted name is free again, once.
        status, _ = await b.call("DELETE", f"/api/v1/scheduler-clusters/{cluster}",
                                 token=tokens[id(b)])
        assert status == 200
        assert await race("/api/v1/scheduler-clusters", {"id": cluster}) == \
            [201] + [409] * (2 * RACERS - 1)

        async def seen_by_both() -> bool:
            for m in (a, b):
                status, body = await m.call("GET", f"/api/v1/scheduler-clusters/{cluster}",
                                            token=tokens[id(m)])
                if status != 200:
                    return False
            return True

        await eventually(seen_by_both)

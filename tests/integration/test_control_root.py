"""The first root user on a fresh log: a generated password, printed once, stored only as a
hash; a second manager (or a restart) creates nothing."""

from __future__ import annotations

import re

import pytest

from damselfly.events.admin import UserSaved
from damselfly.events.codec import decode
from damselfly.events.streams import ensure_streams
from damselfly.services.manager.control.passwords import verify_password
from damselfly.services.manager.control.users import ensure_root
from damselfly.services.runtime.natsconn import connect

pytestmark = pytest.mark.anyio


async def test_a_generated_root_password_is_printed_once_and_stored_hashed(
        nats_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("DAMSELFLY_ROOT_PASSWORD", raising=False)
    nc = await connect(nats_url, "test-root")
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        assert await ensure_root(js) is True
        printed = capsys.readouterr().err
        match = re.search(r"created user root with password (\S+) \(shown once", printed)
        assert match is not None, printed
        password = match[1]

        saved = await js.get_last_msg("DF_ADMIN", "df.admin.user.root.user_saved")
        assert saved.data is not None
        stored = decode(saved.data)
        assert isinstance(stored, UserSaved) and stored.role == "root"
        assert password not in stored.password_hash
        assert verify_password(password, stored.password_hash)

        monkeypatch.setenv("DAMSELFLY_ROOT_PASSWORD", "another-password")
        assert await ensure_root(js) is False
        assert "password" not in capsys.readouterr().err
        info = await js.stream_info("DF_ADMIN")
        assert info.state.messages == 1  # the second manager wrote nothing
    finally:
        await nc.drain()

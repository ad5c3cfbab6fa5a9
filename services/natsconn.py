"""Opening a NATS connection the same way in every service."""

from __future__ import annotations

import nats
from nats.aio.client import Client


async def connect(url: str, name: str) -> Client:
    """Connect with bounded timeouts and endless reconnects. Raises ``OSError`` or
    ``nats.errors.NoServersError`` when no server answers at first."""
    return await nats.connect(url, name=name, connect_timeout=5, max_reconnect_attempts=-1,
                              reconnect_time_wait=0.5, allow_reconnect=True)

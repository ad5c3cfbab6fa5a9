"""Opening a NATS connection the same way in every service."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Final

import nats
from nats.aio.client import Client

log = logging.getLogger("damselfly.nats")


CREDS_ENV: Final = "DAMSELFLY_NATS_CREDS"
"""A credentials file, used for every connection when set: ``user:password`` (what
``damselfly up`` writes for each role) or a NATS ``.creds`` file (JWT and nkey seed)."""


def credentials(path: str) -> dict[str, str]:
    """nats-py's connect options for the credentials file ``path`` (none for "")."""
    if not path:
        return {}
    text = Path(path).read_text()
    if "BEGIN NATS USER JWT" in text:
        return {"user_credentials": path}
    user, _, password = text.strip().partition(":")
    return {"user": user, "password": password}


async def connect(url: str, name: str, *, first_timeout: float = 10.0,
                  creds: str | None = None) -> Client:
    """Connect to ``url`` (or a comma-separated list of a cluster's servers), reconnecting
    forever once connected, with the credentials file ``creds`` (by default the one
    ``CREDS_ENV`` names, if any). Raises
    ``ConnectionError`` when no server answers within ``first_timeout`` seconds, or refuses
    the credentials."""
    connected = False
    refused = False
    creds = os.environ.get(CREDS_ENV, "") if creds is None else creds

    async def on_error(exc: Exception) -> None:
        # Before the first connection the caller reports one line; afterwards every
        # reconnect problem is worth a warning.
        nonlocal refused
        refused = refused or isinstance(exc, nats.errors.AuthorizationError) \
            or "authorization violation" in str(exc).lower()
        log.log(logging.WARNING if connected else logging.DEBUG, "nats: %s",
                exc or type(exc).__name__)

    try:
        client = await asyncio.wait_for(
            nats.connect(url.split(","), name=name, connect_timeout=2, max_reconnect_attempts=-1,
                         reconnect_time_wait=0.5, allow_reconnect=True, error_cb=on_error,
                         **credentials(creds)),
            first_timeout)
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        if refused or isinstance(exc, nats.errors.AuthorizationError):
            raise ConnectionError(f"the NATS server at {url} refuses these credentials "
                                  f"(${CREDS_ENV}: {creds or 'unset'})") from exc
        raise ConnectionError(f"no NATS server answers at {url}") from exc
    connected = True
    return client


async def subscribed(nc: Client, timeout: float = 5.0) -> None:
    """Return once the server holds every subscription ``nc`` has made so far.

    ``nc.flush()`` does not promise that: nats-py writes flush's PING straight to the socket
    while a SUB still waits in the client's buffer for its flusher task, so the PONG can come
    back before the server read the SUB, and another connection's publish lands in between.
    A request goes through that buffer behind the SUB, and the server reads one connection in
    order, so its answer comes after the SUB took effect. Raises NATS errors (a timeout, no
    JetStream)."""
    await nc.jetstream(timeout=timeout).account_info()

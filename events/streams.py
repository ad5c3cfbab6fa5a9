"""JetStream stream definitions and an idempotent ``ensure_streams``."""

from __future__ import annotations

import os
from dataclasses import fields, replace
from typing import Final

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

DAY: Final = 24 * 3600.0
HOSTS_STREAM: Final = "DF_HOSTS"
TASKS_STREAM: Final = "DF_TASKS"
SCHED_STREAM: Final = "DF_SCHED"
JOBS_STREAM: Final = "DF_JOBS"
CONFIG_STREAM: Final = "DF_CONFIG"
ADMIN_STREAM: Final = "DF_ADMIN"
DLQ_STREAM: Final = "DF_DLQ"
LEASE_BUCKET: Final = "df_sched_leases"
"""KV: which scheduler owns which partition of a cluster (``<cluster>-<partition>``)."""
MEMBER_BUCKET: Final = "df_sched_members"
"""KV: the schedulers alive in a cluster, one key each, kept by their heartbeats."""
SNAPSHOT_BUCKET: Final = "df_sched_snapshots"
"""KV: a scheduler partition's folded state, so a new owner replays less."""
DEDUP_WINDOW: Final = 120.0
REPLICAS_ENV: Final = "DAMSELFLY_STREAM_REPLICAS"
"""How many JetStream servers keep each stream and KV bucket (``damselfly up --nats-nodes``,
compose: 3); unset, a service leaves the replica count to whoever created the stream."""


def replicas() -> int | None:
    """The replica count ``REPLICAS_ENV`` asks for, if any. Raises ``ValueError`` when it is
    not a whole number from 1 to 5 (JetStream's range)."""
    value = os.environ.get(REPLICAS_ENV, "")
    if not value:
        return None
    if not value.isdigit() or not 1 <= int(value) <= 5:
        raise ValueError(f"${REPLICAS_ENV} must be a whole number from 1 to 5, not {value!r}")
    return int(value)


def stream_configs(*, task_max_age: float = DAY, task_max_bytes: int = 8 << 30,
                   num_replicas: int | None = None) -> list[StreamConfig]:
    """Every stream of the system; see ``events.subjects`` for the subject scheme."""
    common = StreamConfig(storage=StorageType.FILE, retention=RetentionPolicy.LIMITS,
                          duplicate_window=DEDUP_WINDOW, discard=DiscardPolicy.OLD,
                          num_replicas=num_replicas)
    return [
        replace(common, name=HOSTS_STREAM, subjects=["df.host.>"], max_msgs_per_subject=5),
        replace(common, name=TASKS_STREAM, subjects=["df.task.>"], max_age=task_max_age,
                max_bytes=task_max_bytes),
        replace(common, name=SCHED_STREAM, subjects=["df.sched.>"], max_age=task_max_age),
        replace(common, name=JOBS_STREAM, subjects=["df.job.>"], max_age=7 * DAY),
        replace(common, name=CONFIG_STREAM, subjects=["df.config.>"], max_msgs_per_subject=1),
        replace(common, name=ADMIN_STREAM, subjects=["df.admin.>"]),
        replace(common, name=DLQ_STREAM, subjects=["df.dlq.>"], max_age=7 * DAY),
    ]


STREAM_NAMES: Final = tuple(str(c.name) for c in stream_configs())


async def ensure_streams(js: JetStreamContext, num_replicas: int | None = None) -> None:
    """Create every stream, or bring an existing one to the current definition, with
    ``num_replicas`` (by default what ``REPLICAS_ENV`` asks for, if anything).

    Raises ``nats.js.errors.APIError`` when the server refuses a definition (more replicas
    than servers, say), ``ValueError`` for a bad ``REPLICAS_ENV``.
    """
    for config in stream_configs(num_replicas=num_replicas or replicas()):
        try:
            info = await js.stream_info(str(config.name))
        except NotFoundError:
            try:
                await js.add_stream(config)
                continue
            except BadRequestError:  # created concurrently by another process
                info = await js.stream_info(str(config.name))
        if not same_definition(config, info.config):
            await js.update_stream(config)


def same_definition(want: StreamConfig, have: StreamConfig) -> bool:
    """Whether the stored stream already has every setting ``want`` sets: a service whose
    broker role may not redefine streams (a peer daemon) then never asks to."""
    return all(getattr(have, f.name) == value for f in fields(want)
               if (value := getattr(want, f.name)) is not None)

"""JetStream stream definitions and an idempotent ``ensure_streams``."""

from __future__ import annotations

from typing import Final

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

DAY: Final = 24 * 3600.0
DEDUP_WINDOW: Final = 120.0


def stream_configs(*, task_max_age: float = DAY, task_max_bytes: int = 8 << 30) -> list[StreamConfig]:
    """Every stream of the system; see ``events.subjects`` for the subject scheme."""
    common = {"storage": StorageType.FILE, "retention": RetentionPolicy.LIMITS,
              "duplicate_window": DEDUP_WINDOW, "discard": DiscardPolicy.OLD}
    return [
        StreamConfig(name="DF_HOSTS", subjects=["df.host.>"], max_msgs_per_subject=5, **common),
        StreamConfig(name="DF_TASKS", subjects=["df.task.>"], max_age=task_max_age,
                     max_bytes=task_max_bytes, **common),
        StreamConfig(name="DF_SCHED", subjects=["df.sched.>"], max_age=task_max_age, **common),
        StreamConfig(name="DF_JOBS", subjects=["df.job.>"], max_age=7 * DAY, **common),
        StreamConfig(name="DF_CONFIG", subjects=["df.config.>"], max_msgs_per_subject=1, **common),
        StreamConfig(name="DF_ADMIN", subjects=["df.admin.>"], **common),
        StreamConfig(name="DF_DLQ", subjects=["df.dlq.>"], max_age=7 * DAY, **common),
    ]


STREAM_NAMES: Final = tuple(c.name for c in stream_configs())


async def ensure_streams(js: JetStreamContext, **limits: float) -> None:
    """Create every stream, or bring an existing one to the current definition.

    Raises ``nats.js.errors.APIError`` when the server refuses a definition.
    """
    for config in stream_configs(**limits):  # type: ignore[arg-type]
        try:
            await js.stream_info(config.name)  # type: ignore[arg-type]
        except NotFoundError:
            try:
                await js.add_stream(config)
                continue
            except BadRequestError:  # created concurrently by another process
                pass
        await js.update_stream(config)

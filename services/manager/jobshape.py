"""Jobs in Dragonfly's response shape, as Harbor's preheat provider decodes them (pure).

Harbor (``src/pkg/p2p/preheat/provider/dragonfly.go``) reads ``id`` as an integer,
``created_at``/``updated_at`` as RFC 3339 times, the top-level ``state`` as ``PENDING``,
``SUCCESS`` or ``FAILURE`` (anything else is "unknown state"), and per host the tasks that
succeeded or failed under ``result.job_states[].results[]``. A job's integer id is the first
13 hex digits of its event-log id (52 bits: exact in JSON numbers everywhere), so it needs no
counter and every manager reading the log gives the same one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from typing import Final

NUMBER_DIGITS: Final = 13
STATES: Final = {"pending": "PENDING", "running": "PENDING", "succeeded": "SUCCESS",
                 "failed": "FAILURE"}


def job_number(job_id: str) -> int:
    """The integer id Dragonfly's clients use for the job ``job_id``: its first 13 hex
    digits, or those of its sha256 when it is not hex (an id an external publisher chose)."""
    head = job_id[:NUMBER_DIGITS]
    if len(head) < NUMBER_DIGITS or head.strip("0123456789abcdef"):
        head = hashlib.sha256(job_id.encode()).hexdigest()[:NUMBER_DIGITS]
    return int(head, 16)


def job_prefix(given: str) -> str | None:
    """For an id given as a Dragonfly integer, the prefix of the hex job ids it stands for;
    None when ``given`` is not one (a 32-digit hex id never is: it is longer)."""
    if not given.isdecimal() or len(given) > 16 or int(given) >= 16 ** NUMBER_DIGITS:
        return None
    return f"{int(given):0{NUMBER_DIGITS}x}"


def rfc3339(value: object) -> str | None:
    """A projection timestamp (naive UTC) as RFC 3339, or None."""
    if not isinstance(value, dt.datetime):
        return None
    return value.replace(tzinfo=dt.UTC).isoformat().replace("+00:00", "Z")


def dragonfly_job(job: Mapping[str, object], hosts: Sequence[Mapping[str, object]],
                  urls: Mapping[str, str]) -> dict[str, object]:
    """The Dragonfly fields of a job from its ``jobs`` row and ``job_hosts`` rows (each with
    ``hostname`` and ``ip``); ``urls`` maps a task id to the URL it fetched."""
    state = STATES.get(str(job.get("state")), "PENDING")
    succeeded: list[dict[str, object]] = []
    failed: list[dict[str, object]] = []
    for h in hosts:
        task = {"url": urls.get(str(h["task_id"]), ""), "hostname": h.get("hostname") or "",
                "ip": h.get("ip") or "", "task_id": h["task_id"], "host_id": h["host_id"]}
        if h.get("state") == "succeeded":
            succeeded.append(task)
        elif h.get("state") == "failed":
            failed.append(task | {"description": h.get("reason") or ""})
    job_state: dict[str, object] = {
        "state": state, "error": str(job.get("reason") or "") if state == "FAILURE" else "",
        "results": [{"success_tasks": succeeded, "failure_tasks": failed,
                     "scheduler_clusters": job.get("clusters") or []}]}
    return {
        "id": job_number(str(job["job_id"])), "job_id": job["job_id"], "type": job.get("kind"),
        "state": state, "created_at": rfc3339(job.get("requested_at")),
        "updated_at": rfc3339(job.get("updated_at")),
        "scheduler_cluster_ids": job.get("clusters") or [],
        "result": {"state": state, "job_states": [job_state]},
    }

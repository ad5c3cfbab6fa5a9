"""Jobs in Dragonfly's shape: ``POST /api/v1/jobs`` (signed in) and ``/oapi/v1/jobs`` (a
personal access token with the ``job`` scope) take ``{"type": "preheat" | "delete_task" |
"get_task", "args": {…}, "scheduler_cluster_ids": […]}`` and publish the request event;
the coordinator and the peers do the rest. Credentials in ``args`` (``username``,
``password``, ``Authorization``-like headers) are sealed, never published in clear. The
answer is Dragonfly's (``id`` an integer, ``state`` ``PENDING``), as Harbor reads it, with
the event log's ``job_id`` beside it; the job's URL answers from the moment it returns.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from damselfly.events.base import Event
from damselfly.events.ids import new_id
from damselfly.events.jobs import (
    DeleteTaskRequested,
    GetTaskRequested,
    PreheatKind,
    PreheatRequested,
    PreheatScope,
    SyncPeersRequested,
)
from damselfly.events.secrets import public_headers, seal, sensitive_headers
from damselfly.events.streams import JOBS_STREAM
from damselfly.events.taskid import task_id as compute_task_id
from damselfly.services.manager.control.auth import (
    Caller,
    Principal,
    allow,
    cluster_secret,
    reader_of,
    record,
)
from damselfly.services.manager.control.clusters import by_number, known_clusters
from damselfly.services.manager.jobshape import job_number, rfc3339

router = APIRouter(tags=["jobs"])

URL = r"^https?://[^\s/]+\S*$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PreheatArgs(Strict):
    type: PreheatKind = "file"
    url: Annotated[str, Field(pattern=r"^$|" + URL)] = ""
    urls: list[Annotated[str, Field(pattern=URL)]] = Field(
        [], description="more URLs for the same job; url and urls combine, as in Dragonfly")
    scope: PreheatScope = "single_seed_peer"
    tag: str = ""
    application: str = ""
    filtered_query_params: str = Field("", description="query parameters left out of the "
                                       "task id, '&'-separated")
    headers: dict[str, str] = {}
    username: str = ""
    password: str = ""
    platform: Annotated[str, Field(pattern=r"^$|^[a-z0-9]+/[a-z0-9]+(/[a-z0-9]+)?$")] = ""
    piece_length: Annotated[int, Field(ge=1, le=1 << 30)] | None = None
    # Dragonfly's fields that Harbor always sends (zero for "the default"): taken, not used;
    # a preheat here ends by the manager's preheat timeout and all_peers reaches every host.
    concurrent_count: Annotated[int, Field(ge=0)] = 0
    timeout: Annotated[int, Field(ge=0, description="nanoseconds (Go's Duration)")] = 0

    @field_validator("scope", mode="before")
    @classmethod
    def _default_scope(cls, value: object) -> object:
        return value or "single_seed_peer"  # Harbor sends "" when none is configured


class TaskArgs(Strict):
    """A task by id, or by what its id is computed from (url, tag, application, …)."""

    task_id: Annotated[str, Field(pattern=r"^$|^[0-9a-f]{64}$")] = ""
    url: Annotated[str, Field(pattern=r"^$|" + URL)] = ""
    tag: str = ""
    application: str = ""
    filtered_query_params: str = ""
    piece_length: Annotated[int, Field(ge=1)] | None = None


ClusterId = Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, int) else v)]


class JobCreate(Strict):
    type: Literal["preheat", "delete_task", "get_task", "sync_peers"]
    args: dict[str, Any] = Field(default_factory=dict)
    scheduler_cluster_ids: Annotated[list[ClusterId], BeforeValidator(
        lambda v: [] if v is None else v)] = Field(
        [], description="cluster ids (none or null: every cluster); Dragonfly's numeric ids "
                        "are taken as their decimal text")
    bio: str = ""


def _args(model: type[Strict], args: dict[str, Any]) -> Any:
    try:
        return model.model_validate(args)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "args"
        raise HTTPException(422, f"args.{where}: {first['msg']}") from None


def _tenant(who: Principal, application: str) -> str:
    if who.tenant and application not in ("", who.tenant):
        raise HTTPException(403, f"user {who.user_id} may only act for tenant {who.tenant!r}")
    return who.tenant or application


def _params(text: str) -> list[str]:
    return [p for p in text.split("&") if p]


def _preheat(job_id: str, who: Principal, body: JobCreate) -> PreheatRequested:
    a: PreheatArgs = _args(PreheatArgs, body.args)
    urls = list(dict.fromkeys(filter(None, (a.url, *a.urls))))
    if not urls:
        raise HTTPException(422, "args: give url, or urls (a list)")
    application = _tenant(who, a.application)
    secrets = sensitive_headers(a.headers)
    credentials: dict[str, object] = {k: v for k, v in (("headers", secrets),
                                      ("username", a.username), ("password", a.password)) if v}
    return PreheatRequested(
        id=new_id(), at=time.time(), job_id=job_id, url=urls[0], urls=urls[1:], kind=a.type,
        scope=a.scope, tag=a.tag, application=application, platform=a.platform,
        piece_length=a.piece_length or 0, headers=public_headers(a.headers),
        filtered_query_params=_params(a.filtered_query_params),
        scheduler_cluster_ids=body.scheduler_cluster_ids,
        sealed_credentials=seal(cluster_secret(), credentials))


def _task_job(job_id: str, who: Principal, body: JobCreate) -> Event:
    a: TaskArgs = _args(TaskArgs, body.args)
    if not a.task_id and not a.url:
        raise HTTPException(422, "args: give task_id, or url (with tag, application, "
                                 "filtered_query_params) to compute it")
    task = a.task_id or compute_task_id(
        a.url, tag=a.tag, application=_tenant(who, a.application),
        piece_length=a.piece_length or 0, filtered_query_params=_params(a.filtered_query_params))
    kind = DeleteTaskRequested if body.type == "delete_task" else GetTaskRequested
    return kind(id=new_id(), at=time.time(), job_id=job_id, task_id=task,
                scheduler_cluster_ids=body.scheduler_cluster_ids)


async def _create(request: Request, who: Principal, body: JobCreate) -> dict[str, object]:
    allow(who, scope="job", write=True)
    if who.tenant and body.type != "preheat":
        raise HTTPException(403, f"user {who.user_id} is bound to tenant {who.tenant!r}; "
                                 "only root may delete or look up tasks across tenants")
    known = await known_clusters(reader_of(request))
    body.scheduler_cluster_ids = [by_number(c, known) for c in body.scheduler_cluster_ids]
    unknown = sorted(set(body.scheduler_cluster_ids) - known)
    if unknown:
        raise HTTPException(404, f"unknown scheduler clusters: {', '.join(unknown)}")
    job_id = new_id()
    event: Event
    if body.type == "preheat":
        event = _preheat(job_id, who, body)
    elif body.type == "sync_peers":  # Dragonfly's body has no args worth reading here
        event = SyncPeersRequested(id=new_id(), at=time.time(), job_id=job_id,
                                   scheduler_cluster_ids=body.scheduler_cluster_ids)
    else:
        event = _task_job(job_id, who, body)
    seq, *_ = await record(request, who, f"job.{body.type}", job_id, event, status=201)
    # Read your write: the job's URL answers as soon as this response arrives.
    await reader_of(request).caught_up("jobs", JOBS_STREAM, seq, timeout=2.0)
    created = rfc3339(dt.datetime.fromtimestamp(event.at, dt.UTC).replace(tzinfo=None))
    out: dict[str, object] = {"id": job_number(job_id), "job_id": job_id, "type": body.type,
                              "state": "PENDING", "created_at": created, "updated_at": created,
                              "scheduler_cluster_ids": body.scheduler_cluster_ids}
    if isinstance(event, PreheatRequested):
        out |= {"url": event.url, "urls": [event.url, *event.urls], "scope": event.scope,
                "application": event.application}
    elif isinstance(event, DeleteTaskRequested | GetTaskRequested):
        out["task_id"] = event.task_id
    return out


@router.post("/api/v1/jobs", status_code=201, summary="Create a job (preheat, delete_task, "
             "get_task, sync_peers)")
async def create_job(request: Request, who: Caller, body: JobCreate) -> dict[str, object]:
    return await _create(request, who, body)


@router.post("/oapi/v1/jobs", status_code=201, summary="Create a job with a personal access "
             "token")
async def create_job_open(request: Request, who: Caller, body: JobCreate) -> dict[str, object]:
    return await _create(request, who, body)

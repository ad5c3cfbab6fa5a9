"""The daemon's job worker: runs the preheat jobs meant for this host through the daemon's
own downloads, answers get-task jobs, and reports each task's progress as ``JobProgressed``.

Which jobs reach which host is decided by JetStream consumers on DF_JOBS:
``single_seed_peer`` preheats go to one durable consumer shared by the seed peers of a
cluster (each job is delivered to one of them); ``all_seed_peers`` and ``all_peers``
preheats to a durable consumer of each host's own. Seed peers fetch from the origin
straight away; other peers download through the scheduler like any client.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import anyio
from anyio.abc import TaskGroup, TaskStatus
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError

from damselfly.events.bus import Consumer, Delivered, decoded
from damselfly.events.ids import derived_id
from damselfly.events.jobs import (
    GetTaskRequested,
    HostJobState,
    JobProgressed,
    PreheatRequested,
    SyncPeersRequested,
)
from damselfly.events.secrets import SealError, open_sealed
from damselfly.events.streams import JOBS_STREAM
from damselfly.events.subjects import job_filter, name_of
from damselfly.services.peer.downloads import Downloads
from damselfly.services.peer.oci import BlobRef, basic_auth, bearer_token, blob_task_id, blob_url
from damselfly.services.peer.request import DownloadRequest
from damselfly.services.runtime.natsconn import subscribed

log = logging.getLogger("damselfly.jobs")

MANIFEST: Final = re.compile(r"^(?P<base>https?://[^/]+)/v2/(?P<name>.+)/manifests/(?P<ref>[^/]+)$")
INDEX_TYPES: Final = ("application/vnd.oci.image.index.v1+json",
                      "application/vnd.docker.distribution.manifest.list.v2+json")
ACCEPT: Final = ", ".join((*INDEX_TYPES, "application/vnd.oci.image.manifest.v1+json",
                           "application/vnd.docker.distribution.manifest.v2+json"))
REQUESTS: Final = job_filter(name_of(PreheatRequested))
INACTIVE_AFTER: Final = 7 * 24 * 3600.0


@dataclass(frozen=True)
class Target:
    task_id: str
    request: DownloadRequest


def file_target(e: PreheatRequested, url: str, headers: dict[str, str]) -> Target:
    request = DownloadRequest(url=url, headers=headers, tag=e.tag, application=e.application,
                              piece_length=e.piece_length,
                              filtered_query_params=e.filtered_query_params)
    return Target(request.task_id(), request)


def _registry_reason(status: int, body: object) -> str:
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return f"{errors[0].get('code', status)}: {errors[0].get('message', '')}".strip()
    return f"HTTP {status}"


def choose_manifest(index: dict[str, Any], platform: str = "") -> str:
    """The digest of the manifest an image index lists for ``os/arch[/variant]`` (default
    ``linux/amd64``). Raises ``ValueError`` naming the platforms it has."""
    os_, _, rest = (platform or "linux/amd64").partition("/")
    arch, _, variant = rest.partition("/")
    listed = [(m.get("platform", {}), m.get("digest", "")) for m in index.get("manifests", [])]
    for p, digest in listed:
        if (p.get("os"), p.get("architecture")) == (os_, arch) and (
                not variant or p.get("variant") == variant):
            return str(digest)
    have = ", ".join("/".join(filter(None, (p.get("os"), p.get("architecture"), p.get("variant"))))
                     for p, _ in listed) or "none"
    raise ValueError(f"no manifest for platform {platform or 'linux/amd64'} (the index has {have})")


async def image_targets(e: PreheatRequested, url: str, headers: dict[str, str], login: str,
                        timeout: float = 30.0) -> list[Target]:
    """Every blob (config and layers) of the image the manifest ``url`` names; an index is
    resolved by ``platform`` (default linux/amd64). Raises ``ValueError`` with the registry's
    reason, ``aiohttp.ClientError`` or ``TimeoutError``."""
    match = MANIFEST.match(url)
    if match is None:
        raise ValueError(f"not an image manifest URL (…/v2/<name>/manifests/<ref>): {url}")
    base, name = match["base"], match["name"]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        auth = headers.get("Authorization") or await bearer_token(session, base, name, login)
        wanted = {**headers, "Accept": ACCEPT, **({"Authorization": auth} if auth else {})}

        async def manifest(ref: str) -> dict[str, Any]:
            async with session.get(f"{base}/v2/{name}/manifests/{ref}", headers=wanted) as r:
                body = await r.json(content_type=None)
                if r.status != 200:
                    raise ValueError(f"{url}: {_registry_reason(r.status, body)}")
                assert isinstance(body, dict)
                return body

        doc = await manifest(match["ref"])
        if doc.get("mediaType") in INDEX_TYPES or "manifests" in doc:
            try:
                doc = await manifest(choose_manifest(doc, e.platform))
            except ValueError as exc:
                raise ValueError(f"{url}: {exc}") from None
        blobs = [doc["config"], *doc.get("layers", [])]
    auth_headers = {"Authorization": auth} if auth else {}
    return [Target(blob_task_id(b["digest"], e.piece_length),
                   DownloadRequest(url=blob_url(base, BlobRef(name, b["digest"])),
                                   headers=auth_headers, digest=b["digest"],
                                   piece_length=e.piece_length))
            for b in blobs]


class JobWorker:
    def __init__(self, downloads: Downloads, tg: TaskGroup, *, seed: bool) -> None:
        self.downloads = downloads
        self.ctx = downloads.ctx
        self._tg = tg
        self.seed = seed

    def _mine(self, clusters: list[str]) -> bool:
        return not clusters or self.ctx.cluster in clusters

    async def on_shared(self, item: Delivered) -> None:
        e = item.event
        if isinstance(e, PreheatRequested) and e.scope == "single_seed_peer" and self._mine(
                e.scheduler_cluster_ids):
            self._tg.start_soon(self.preheat, e)

    async def on_own(self, item: Delivered) -> None:
        e = item.event
        if isinstance(e, PreheatRequested) and self._mine(e.scheduler_cluster_ids) and (
                e.scope == "all_peers" or (e.scope == "all_seed_peers" and self.seed)):
            self._tg.start_soon(self.preheat, e)

    def _report(self, e: PreheatRequested | GetTaskRequested | SyncPeersRequested,
                task_id: str, state: HostJobState, reason: str = "") -> JobProgressed:
        host = self.ctx.host_id
        return JobProgressed(id=derived_id(e.id, host, task_id, state), at=time.time(),
                             job_id=e.job_id, host_id=host, task_id=task_id, state=state,
                             reason=reason)

    async def _progress(self, e: PreheatRequested | GetTaskRequested, task_id: str,
                        state: HostJobState, reason: str = "") -> None:
        await self.ctx.publish(self._report(e, task_id, state, reason))

    async def preheat(self, e: PreheatRequested) -> None:
        """Run a preheat; never raises, so one job's trouble never stops the daemon (the
        coordinator fails a job whose report never comes, at its deadline)."""
        try:
            await self._preheat(e)
        except Exception as exc:  # noqa: BLE001 - NATS down while reporting, say
            log.error("preheat job %s on %s: %r", e.job_id, e.url, exc)

    async def _preheat(self, e: PreheatRequested) -> None:
        """Every URL's tasks, each reported; a URL that cannot be resolved fails alone."""
        targets: dict[str, Target] = {}
        for url in (e.url, *e.urls):
            try:
                targets |= {t.task_id: t for t in await self._targets(e, url)}
            except (ValueError, SealError, aiohttp.ClientError, TimeoutError) as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                await self._progress(e, file_target(e, url, {}).task_id, "failed", reason)
        for t in targets.values():
            await self._progress(e, t.task_id, "running")
        straight = "preheat job on a seed peer" if self.seed else ""
        started = [self.downloads.start(t.request, task_id=t.task_id, straight_to_source=straight)
                   for t in targets.values()]
        for download in started:
            await download.finished.wait()
            ok = download.state == "succeeded"
            await self._progress(e, download.task_id, "succeeded" if ok else "failed",
                                 "" if ok else download.error or download.state)

    async def _targets(self, e: PreheatRequested, url: str) -> list[Target]:
        credentials = open_sealed(self.ctx.secret, e.sealed_credentials)
        secret_headers = credentials.get("headers", {})
        headers = {**e.headers, **(secret_headers if isinstance(secret_headers, dict) else {})}
        username = str(credentials.get("username", ""))
        login = basic_auth(username, str(credentials.get("password", ""))) if username else ""
        if e.kind == "image":
            # The registry's token service takes the login; the blobs get its bearer token.
            return await image_targets(e, url, headers, login)
        if login:
            headers.setdefault("Authorization", login)
        return [file_target(e, url, headers)]

    async def on_get_task(self, msg: Msg) -> None:
        e = decoded(msg)
        if e is None:
            return
        if not isinstance(e, GetTaskRequested) or not self._mine(e.scheduler_cluster_ids):
            return
        if holding := self._holding(e.task_id):
            await self._progress(e, e.task_id, "succeeded", holding)

    def _holding(self, task_id: str) -> str:
        """How this host holds a task: ``downloading``, ``held``, ``partial``, or ""."""
        running = self.downloads.get(task_id)
        if running is not None and not running.finished.is_set():
            return "downloading"
        tf = self.ctx.storage.get(task_id)
        return "" if tf is None else "held" if tf.complete else "partial"

    async def on_sync_peers(self, msg: Msg) -> None:
        """Answer a census with every task this host holds, in one pipelined batch."""
        e = decoded(msg)
        if e is None:
            return
        if not isinstance(e, SyncPeersRequested) or not self._mine(e.scheduler_cluster_ids):
            return
        tasks = {tf.task_id for tf in self.ctx.storage.tasks()} | self.downloads.active()
        reports = [self._report(e, task_id, "succeeded", holding)
                   for task_id in sorted(tasks) if (holding := self._holding(task_id))]
        try:
            await self.ctx.publisher.publish_many(reports)
        except (NatsError, TimeoutError) as exc:  # the job's window closes without them
            log.warning("sync_peers job %s: holdings not reported: %r", e.job_id, exc)


async def _follow(consumer: Consumer, handler: Callable[[Delivered], Awaitable[None]]) -> None:
    """``Consumer.run`` minus its stop event; a job is acked once it was taken on."""
    try:
        while True:
            try:
                items = await consumer.fetch()
            except (NatsError, OSError) as exc:  # NATS away: the durable consumer waits
                log.warning("cannot fetch jobs, retrying: %r", exc)
                await anyio.sleep(1.0)
                continue
            for item in items:
                await handler(item)
                await item.msg.ack()
    finally:
        with anyio.CancelScope(shield=True):
            await consumer.close()


async def _durable(js: JetStreamContext, name: str) -> Consumer:
    """A durable consumer of preheat requests from now on, which the server drops after a
    week without a reader — hosts that are gone do not leave consumers behind forever."""
    config = ConsumerConfig(durable_name=name, filter_subject=REQUESTS,
                            deliver_policy=DeliverPolicy.NEW, ack_policy=AckPolicy.EXPLICIT,
                            max_deliver=5, ack_wait=30.0, inactive_threshold=INACTIVE_AFTER)
    try:
        await js.add_consumer(JOBS_STREAM, config)
    except BadRequestError:  # it exists, made by an earlier version of this code: use it
        pass
    return Consumer(js, stream=JOBS_STREAM, filter_subject=REQUESTS, durable=name)


async def run_job_worker(downloads: Downloads, *, seed: bool,
                         task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    """Take this host's jobs until cancelled. Raises NATS errors when it cannot subscribe.

    Reports started (``TaskGroup.start``) once a job asked for from then on reaches it: its
    durable consumers exist on the server and the server holds its get-task subscription.
    """
    ctx = downloads.ctx
    async with anyio.create_task_group() as tg:
        worker = JobWorker(downloads, tg, seed=seed)
        subs = [await ctx.nc.subscribe(job_filter(name_of(GetTaskRequested)),
                                       cb=worker.on_get_task),
                await ctx.nc.subscribe(job_filter(name_of(SyncPeersRequested)),
                                       cb=worker.on_sync_peers)]
        try:
            if seed:
                shared = await _durable(ctx.js, f"jobs-seed-{ctx.cluster}")
                tg.start_soon(_follow, shared, worker.on_shared)
            tg.start_soon(_follow, await _durable(ctx.js, f"jobs-{ctx.host_id}"), worker.on_own)
            await subscribed(ctx.nc)
            task_status.started()
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                for sub in subs:
                    await sub.unsubscribe()

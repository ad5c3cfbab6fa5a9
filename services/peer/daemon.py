"""The peer daemon's bootstrap: storage, NATS, the scheduler cluster (asked of the manager
with ``auto``), the upload server, the local API, the host's announcements, seed triggers, GC,
and resuming unfinished tasks after a restart."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Final

import anyio
import msgspec
import nats.errors
from aiohttp import web
from nats.aio.client import Client
from nats.aio.msg import Msg

from damselfly.events.bus import Publisher, decoded
from damselfly.events.clustersearch import FALLBACK, TIMEOUT, ClusterQuery, ask_cluster
from damselfly.events.grants import GrantVerifier
from damselfly.events.hosts import HostAnnounced, HostKeepalive, HostLeft
from damselfly.events.ids import derived_id, new_id
from damselfly.events.jobs import DeleteTaskRequested, JobProgressed
from damselfly.events.sched import SeedPeerTriggered
from damselfly.events.streams import ensure_streams
from damselfly.events.subjects import (
    host_subject,
    job_filter,
    name_of,
    safe_token,
    sched_filter,
)
from damselfly.services.peer.api import api_app
from damselfly.services.peer.downloader import PeerContext
from damselfly.services.peer.downloads import Downloads
from damselfly.services.peer.fetchbook import Settings
from damselfly.services.peer.jobs import run_job_worker
from damselfly.services.peer.metrics import TransferStats
from damselfly.services.peer.origins import Sources
from damselfly.services.peer.parents import ParentClient
from damselfly.services.peer.proxy import ProxyConfig, proxy_app
from damselfly.services.peer.request import DownloadRequest
from damselfly.services.peer.storage import Storage
from damselfly.services.peer.upload import upload_app
from damselfly.services.runtime.natsconn import connect
from damselfly.services.runtime.procs import write_ready

log = logging.getLogger("damselfly.daemon")

AUTO: Final = "auto"


@dataclass(frozen=True)
class DaemonConfig:
    nats_url: str
    data_dir: Path
    secret: str
    cluster: str = AUTO
    """The scheduler cluster, or ``auto``: the one the manager's cluster search answers."""
    seed: bool = False
    api_socket: Path | None = None
    api_port: int | None = None
    upload_port: int = 0
    advertise_host: str = "127.0.0.1"
    idc: str = ""
    location: str = ""
    ready_file: Path | None = None
    upload_limit: int = 50
    upload_slots: int = 4
    spread: float = 1.0
    upload_rate: float = 0.0
    compress: bool = True  # zstd on the wire for children that accept it (wire.py)
    keepalive: float = 0.0
    """Seconds between keepalives; 0: 2 for a seed peer (its death should reach the children
    waiting for it quickly, ``events.hosts.KEEPALIVE_MISSES``), else 5."""
    quota: int = 0
    gc_high: int = 0
    gc_low: int = 0
    ttl: float = 0.0
    gc_interval: float = 60.0
    settings: Settings = field(default_factory=Settings)
    proxy_port: int | None = None
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    grants: GrantVerifier | None = None
    """The schedulers' public key: the upload server then serves only granted children."""


def host_id_for(data_dir: Path) -> str:
    """This daemon's id, kept in the data dir so that a restart keeps it."""
    path = data_dir / "host_id"
    if not path.exists():
        path.write_text(f"{safe_token(socket.gethostname())}-{secrets.token_hex(4)}")
    return path.read_text().strip()


async def choose_cluster(nc: Client, cfg: DaemonConfig, hostname: str) -> str:
    """``cfg.cluster``; with ``auto`` the manager's answer to a cluster search for this host,
    or ``default`` when no manager answers within ``TIMEOUT`` seconds. Logs which and why."""
    if cfg.cluster != AUTO:
        return cfg.cluster
    query = ClusterQuery(hostname=hostname, ip=await _address_of(cfg.advertise_host),
                         idc=cfg.idc, location=cfg.location)
    facts = msgspec.json.encode(query).decode()
    try:
        answer = await ask_cluster(nc, query)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError, msgspec.DecodeError) as exc:
        log.info("cluster %s: no manager answered the cluster search within %g s (%s)",
                 FALLBACK, TIMEOUT, exc)
        return FALLBACK
    if answer.error:
        log.warning("cluster %s: the manager's cluster search failed: %s", answer.cluster,
                    answer.error)
    elif answer.matched:
        log.info("cluster %s: its scopes match this host %s", answer.cluster, facts)
    else:
        log.info("cluster %s: the manager's default, no cluster's scopes match this host %s",
                 answer.cluster, facts)
    return answer.cluster


async def _address_of(host: str) -> str:
    """``host`` as an IP address, for CIDR scopes: itself, or what its name resolves to
    ("" when it does not resolve in time)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    with anyio.move_on_after(TIMEOUT):
        try:
            return str((await anyio.getaddrinfo(host, None))[0][4][0])
        except OSError:
            pass
    return ""


def _listen_host(advertised: str) -> str:
    """Loopback when only this machine's peers need the uploads, else every interface."""
    try:
        loopback = ipaddress.ip_address(advertised).is_loopback
    except ValueError:
        loopback = advertised == "localhost"
    return "127.0.0.1" if loopback else "0.0.0.0"  # peers on other hosts fetch from it


async def _site(app: web.Application, *, host: str | None = None, port: int | None = None,
                path: Path | None = None) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    if path is not None:
        path.unlink(missing_ok=True)
        await web.UnixSite(runner, str(path)).start()
        return runner, 0
    site = web.TCPSite(runner, host, port or 0)
    await site.start()
    server = site._server
    assert server is not None
    return runner, server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]


async def serve(cfg: DaemonConfig, stop: asyncio.Event) -> None:
    """Run the daemon until ``stop`` is set; then say HostLeft and close everything.
    Raises ``OSError`` (ports, sockets, data dir) or NATS errors when it cannot start."""
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    storage = Storage(cfg.data_dir, quota=cfg.quota, gc_high=cfg.gc_high, gc_low=cfg.gc_low,
                      ttl=cfg.ttl)
    host_id = host_id_for(cfg.data_dir)
    hostname = socket.gethostname()
    nc = await connect(cfg.nats_url, f"damselfly-daemon-{host_id}")
    runners: list[web.AppRunner] = []
    try:
        cfg = replace(cfg, cluster=await choose_cluster(nc, cfg, hostname))
        js = nc.jetstream()
        await ensure_streams(js)
        stats = TransferStats()
        runner, upload_port = await _site(
            upload_app(storage, cfg.secret, stats, max_uploads=cfg.upload_slots,
                       rate_limit=cfg.upload_rate, spread=cfg.spread if cfg.seed else 0.0,
                       compress=cfg.compress, grants=cfg.grants, host_id=host_id),
            host=_listen_host(cfg.advertise_host),
            port=cfg.upload_port)
        runners.append(runner)
        upload_url = f"http://{cfg.advertise_host}:{upload_port}"
        ctx = PeerContext(cluster=cfg.cluster, host_id=host_id, secret=cfg.secret, nc=nc, js=js,
                          publisher=Publisher(js), storage=storage, sources=Sources.default(),
                          parents=ParentClient(), stats=stats, settings=cfg.settings)
        async with anyio.create_task_group() as tg:
            downloads = Downloads(ctx, tg)
            ctx.active = downloads.active
            app = api_app(downloads, stats)
            api_socket = cfg.api_socket or cfg.data_dir / "api.sock"
            runners.append((await _site(app, path=api_socket))[0])
            api_url = ""
            if cfg.api_port is not None:
                runner, api_port = await _site(app, host="127.0.0.1", port=cfg.api_port)
                runners.append(runner)
                api_url = f"http://127.0.0.1:{api_port}"
            proxy_url = ""
            if cfg.proxy_port is not None:
                runner, proxy_port = await _site(proxy_app(downloads, cfg.proxy),
                                                 host="127.0.0.1", port=cfg.proxy_port)
                runners.append(runner)
                proxy_url = f"http://127.0.0.1:{proxy_port}"
            # Listening before announcing: a seed trigger sent the moment the scheduler hears of
            # this host must reach it (the SUBs go out on this connection before the announce).
            if cfg.seed:
                async def on_trigger(msg: Msg) -> None:
                    await _on_seed_trigger(msg, downloads, host_id)

                await nc.subscribe(sched_filter(cfg.cluster, addressee=host_id),
                                   cb=on_trigger)
            async def on_delete(msg: Msg) -> None:
                await _on_delete_requested(msg, downloads, cfg.cluster)

            await nc.subscribe(job_filter(name_of(DeleteTaskRequested)), cb=on_delete)

            def announcement() -> HostAnnounced:
                return HostAnnounced(
                    id=new_id(), at=time.time(), cluster=cfg.cluster, host_id=host_id,
                    hostname=hostname, ip=cfg.advertise_host, upload_url=upload_url,
                    seed=cfg.seed, idc=cfg.idc, location=cfg.location,
                    upload_limit=cfg.upload_limit, interval=keepalive_interval(cfg))

            async def on_left(msg: Msg) -> None:
                await _on_declared_dead(msg, ctx, stop, announcement)

            await nc.subscribe(host_subject(cfg.cluster, host_id, "left"), cb=on_left)
            await ctx.publish(announcement())
            for tf in storage.tasks():
                if not tf.complete:
                    log.info("resuming task %s", tf.task_id[:12],
                             extra={"task_id": tf.task_id, "host_id": host_id})
                    downloads.start(tf.meta.request, task_id=tf.task_id)
            # Ready means ready for jobs too: a preheat asked for right after start reaches us.
            await tg.start(partial(run_job_worker, downloads, seed=cfg.seed))
            tg.start_soon(_keepalive, ctx, cfg, stats)
            tg.start_soon(_collect_garbage, ctx, cfg, downloads)
            if cfg.ready_file is not None:
                write_ready(cfg.ready_file, {"host_id": host_id, "api_socket": str(api_socket),
                                             "api_url": api_url, "upload_url": upload_url,
                                             **({"proxy_url": proxy_url} if proxy_url else {})})
            log.info("daemon %s ready: upload %s, api %s %s", host_id, upload_url, api_socket,
                     api_url, extra={"host_id": host_id})
            await stop.wait()
            downloads.cancel_all()
            tg.cancel_scope.cancel()
        with anyio.move_on_after(5, shield=True):
            await ctx.publish(HostLeft(id=new_id(), at=time.time(), cluster=cfg.cluster,
                                       host_id=host_id, reason="stopped"))
    finally:
        with anyio.CancelScope(shield=True):
            for runner in reversed(runners):
                await runner.cleanup()
            for tf in storage.tasks():
                tf.close()
            await nc.drain()


async def _on_seed_trigger(msg: Msg, downloads: Downloads, host_id: str) -> None:
    event = decoded(msg)
    if event is None:
        return
    if not isinstance(event, SeedPeerTriggered) or event.host_id != host_id:
        return
    # A decision reaches this subscription once per publish, and a scheduler that takes a
    # partition over publishes again what it replays (the stream keeps one copy): a task
    # this seed already fetches or holds is not fetched once more under a new peer.
    current = downloads.get(event.task_id)
    if current is not None and current.state not in ("failed", "cancelled"):
        return
    request = DownloadRequest(url=event.url, headers=event.headers, tag=event.tag,
                              application=event.application, piece_length=event.piece_length,
                              filtered_query_params=event.filtered_query_params)
    downloads.start(request, task_id=event.task_id,
                    straight_to_source="seed peer triggered by the scheduler")


async def _on_declared_dead(msg: Msg, ctx: PeerContext, stop: asyncio.Event,
                            announcement: Callable[[], HostAnnounced]) -> None:
    """A scheduler declared this running host dead (its keepalives did not reach it in
    time): announce it again, so that new tasks may use it (its peers then were dropped)."""
    event = decoded(msg)
    if event is None:
        return
    if stop.is_set() or not isinstance(event, HostLeft) or event.host_id != ctx.host_id:
        return
    log.warning("declared dead while running (%s); announcing this host again",
                event.reason or "no reason given", extra={"host_id": ctx.host_id})
    try:
        await ctx.publish(announcement())
    except (nats.errors.Error, TimeoutError) as exc:
        log.warning("announcement not published: %r", exc)


async def _on_delete_requested(msg: Msg, downloads: Downloads, cluster: str) -> None:
    """Drop a task when a delete job asks this daemon's cluster to, and say so."""
    event = decoded(msg)
    if event is None:
        return
    if not isinstance(event, DeleteTaskRequested) or (
            event.scheduler_cluster_ids and cluster not in event.scheduler_cluster_ids):
        return
    if await downloads.cancel(event.task_id):
        ctx = downloads.ctx
        await ctx.publish(JobProgressed(id=derived_id(event.id, ctx.host_id), at=time.time(),
                                        job_id=event.job_id, host_id=ctx.host_id,
                                        task_id=event.task_id, state="succeeded",
                                        reason="deleted"))


def keepalive_interval(cfg: DaemonConfig) -> float:
    return cfg.keepalive or (2.0 if cfg.seed else 5.0)


async def _keepalive(ctx: PeerContext, cfg: DaemonConfig, stats: TransferStats) -> None:
    interval = keepalive_interval(cfg)
    while True:
        await anyio.sleep(interval)
        try:
            await ctx.publish(HostKeepalive(id=new_id(), at=time.time(), cluster=cfg.cluster,
                                            host_id=ctx.host_id,
                                            uploads_running=stats.uploads_running,
                                            upload_limit=cfg.upload_limit, interval=interval))
        except Exception as exc:  # noqa: BLE001 - NATS down: keep serving, say it next time
            log.warning("keepalive not published: %r", exc)


async def _collect_garbage(ctx: PeerContext, cfg: DaemonConfig, downloads: Downloads) -> None:
    while True:
        await anyio.sleep(cfg.gc_interval)
        removed = ctx.storage.collect(downloads.active())
        if removed:
            log.info("collected %d tasks", len(removed))
            await ctx.forget(removed)

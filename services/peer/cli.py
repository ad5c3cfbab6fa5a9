"""Subcommands of the peer service: ``damselfly daemon`` and ``damselfly get``."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from damselfly.services.peer.init import register as register_init
from damselfly.services.runtime.units import duration, size

# asyncio and anyio load inside the commands: `damselfly get --help` needs neither.


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this service's subcommands to the ``damselfly`` parser."""
    d = sub.add_parser("daemon", help="run a peer daemon (or a seed peer with --seed)")
    d.add_argument("--nats", required=True, help="NATS URL")
    d.add_argument("--data-dir", type=Path, required=True, help="where tasks are stored")
    d.add_argument("--cluster", default="auto",
                   help="scheduler cluster id, or auto (default): ask the manager at start, "
                        "'default' when no manager answers")
    d.add_argument("--seed", action="store_true", help="announce as a seed peer")
    d.add_argument("--api-socket", type=Path, help="local API socket (default DIR/api.sock)")
    d.add_argument("--api-port", type=int, help="also serve the local API on 127.0.0.1:N "
                                                "(0: any free port)")
    d.add_argument("--upload-port", type=int, default=0, help="upload server port (0: free)")
    d.add_argument("--advertise-host", default="127.0.0.1",
                   help="host name or IP other peers reach this daemon's uploads at (default "
                        "127.0.0.1; any other value makes the upload server listen on every "
                        "interface)")
    d.add_argument("--idc", default="")
    d.add_argument("--location", default="", help="location path such as a|b|c")
    d.add_argument("--ready-file", type=Path, help="write endpoints here once serving")
    d.add_argument("--secret-file", type=Path, help="cluster secret (default: "
                                                    "$DAMSELFLY_CLUSTER_SECRET)")
    d.add_argument("--upload-limit", type=int, default=50,
                   help="children the scheduler may give this host's peers at once")
    d.add_argument("--upload-slots", type=int, default=4,
                   help="piece responses sent at once; more requests wait their turn")
    d.add_argument("--no-wire-compression", dest="compress", action="store_false",
                   help="never send pieces zstd-compressed (by default a task whose bytes "
                        "compress goes out compressed to children that accept it)")
    d.add_argument("--spread", type=float, default=1.0,
                   help="a seed peer refuses a piece on its way to one child to the others, "
                        "and for this many seconds after (longer if the send took longer; "
                        "super-seeding; 0: off)")
    d.add_argument("--upload-rate", type=float, default=0.0,
                   help="upload bandwidth limit in bytes/s (0: none)")
    d.add_argument("--concurrency", type=int, default=16, help="pieces in flight per download")
    d.add_argument("--schedule-timeout", type=float, default=10.0,
                   help="seconds to wait for the scheduler before going back to source")
    d.add_argument("--queue-timeout", type=float, default=300.0,
                   help="seconds a peer the scheduler queued waits for a parent before "
                        "going back to source")
    d.add_argument("--stall-timeout", type=float, default=5.0,
                   help="seconds without progress before asking for other parents")
    d.add_argument("--disk-quota", type=int, default=0, help="bytes this daemon may store")
    d.add_argument("--gc-high", type=int, default=0, help="GC starts above this many bytes")
    d.add_argument("--gc-low", type=int, default=0, help="GC stops at this many bytes")
    d.add_argument("--task-ttl", type=float, default=6 * 3600.0,
                   help="seconds an unused task is kept")
    d.add_argument("--proxy-port", type=int, nargs="?", const=4001,
                   help="run the registry mirror / HTTP proxy on 127.0.0.1:N (alone: 4001; "
                        "0: any free port)")
    d.add_argument("--registry-mirror", default="",
                   help="the proxy's default upstream registry (default Docker Hub)")
    d.add_argument("--proxy-rule", action="append", default=[],
                   help="REGEX=swarm|direct[:param,…]: forward-proxy URLs through the swarm or "
                        "straight to the origin, with filtered query parameters (repeat)")
    d.add_argument("--proxy-ca", type=Path, help="PEM file with a CA certificate and its key: "
                                                 "intercept CONNECT with certificates it signs")
    d.set_defaults(run=_daemon)

    g = sub.add_parser("get", help="download a URL through the swarm (dfget's flags; "
                                    "each long flag also reads DFGET_<FLAG> from the "
                                    "environment)")
    g.add_argument("url", help="http(s)://…, s3://BUCKET/KEY or "
                               "hf://[datasets/|spaces/]OWNER/REPO[@REVISION]/PATH")
    g.add_argument("-O", "--output", required=True, help="output path (a directory with -r)")
    g.add_argument("--digest", default=_env("digest", ""),
                   help="sha256:<hex>, sha512:<hex> or crc32:<hex>")
    g.add_argument("-H", "--header", action="append", default=[], help="'Name: value'")
    g.add_argument("--tag", default=_env("tag", ""))
    g.add_argument("--application", default=_env("application", ""))
    g.add_argument("-p", "--priority", type=int, default=int(_env("priority", "6")),
                   choices=range(7), metavar="0-6",
                   help="Dragonfly's levels (default 6: a seed peer fetches a task nobody "
                        "holds; 3: this peer fetches it itself)")
    g.add_argument("--filtered-query-param", action="append", default=[],
                   help="query parameter left out of the task id (repeat, or join with &)")
    g.add_argument("--content-for-calculating-task-id",
                   default=_env("content_for_calculating_task_id", ""),
                   help="compute the task id from this text instead of the URL")
    g.add_argument("--piece-length", type=size, default=size(_env("piece_length", "0")),
                   help="bytes, or 4mib, 16kb (default: automatic)")
    g.add_argument("--disable-back-to-source", action="store_true",
                   default=_flag("disable_back_to_source"),
                   help="never fetch from the origin on this host (a seed peer still may)")
    g.add_argument("-r", "--recursive", action="store_true",
                   help="download every file under a directory listing")
    g.add_argument("-I", "--include-files", action="append", default=[],
                   help="with -r: only paths matching this glob, such as '*.bin' or "
                        "'models/*' (repeat)")
    g.add_argument("--max-files", type=int, default=int(_env("max_files", "100")),
                   help="with -r: refuse a listing of more files (default 100)")
    g.add_argument("--max-concurrent-requests", type=int,
                   default=int(_env("max_concurrent_requests", "5")),
                   help="with -r: files downloaded at once (default 5)")
    g.add_argument("--overwrite", action="store_true", default=_flag("overwrite"),
                   help="replace an existing output file (without it, one is refused)")
    g.add_argument("--force-hard-link", action="store_true", default=_flag("force_hard_link"),
                   help="hard-link the output to the daemon's copy, failing when it cannot "
                        "(default: copy); writing to a linked output corrupts the cache")
    g.add_argument("--timeout", type=duration, default=duration(_env("timeout", "2h")),
                   help="seconds, or 30m, 2h, 1h30m (default 2h; 0: none)")
    g.add_argument("-e", "--endpoint", default=_env("endpoint", "") or None,
                   help="daemon API: a unix socket path or http://host:port")
    g.add_argument("--no-progress", action="store_true", default=_flag("no_progress"),
                   help="no progress bar (there is none when stderr is not a terminal)")
    g.add_argument("-l", "--log-level", default=_env("log_level", "info"),
                   choices=["trace", "debug", "info", "warn", "error"])
    g.set_defaults(run=_get)

    register_init(sub)  # ``damselfly init containerd|docker|podman``


def _env(flag: str, default: str) -> str:
    """dfget's environment variable for a flag (``DFGET_MAX_FILES`` for ``max_files``)."""
    return os.environ.get(f"DFGET_{flag.upper()}", default)


def _flag(flag: str) -> bool:
    return _env(flag, "false").strip().lower() in ("1", "true", "yes", "on")


def _daemon(args: argparse.Namespace) -> int:
    import asyncio

    import anyio

    from damselfly.events.grants import GrantVerifier
    from damselfly.events.secrets import read_secret
    from damselfly.services.peer.daemon import DaemonConfig, serve
    from damselfly.services.peer.fetchbook import Settings
    from damselfly.services.peer.proxy import proxy_config
    from damselfly.services.runtime.signals import stop_on_signals

    cfg = DaemonConfig(
        nats_url=args.nats, data_dir=args.data_dir.resolve(),
        secret=read_secret(args.secret_file), cluster=args.cluster, seed=args.seed,
        api_socket=args.api_socket, api_port=args.api_port, upload_port=args.upload_port,
        advertise_host=args.advertise_host,
        idc=args.idc, location=args.location, ready_file=args.ready_file,
        upload_limit=args.upload_limit, upload_slots=args.upload_slots, spread=args.spread,
        compress=args.compress,
        upload_rate=args.upload_rate, quota=args.disk_quota,
        gc_high=args.gc_high, gc_low=args.gc_low, ttl=args.task_ttl,
        settings=Settings(concurrency=args.concurrency, schedule_timeout=args.schedule_timeout,
                          queue_timeout=args.queue_timeout, stall_timeout=args.stall_timeout),
        proxy_port=args.proxy_port,
        proxy=proxy_config(args.registry_mirror, args.proxy_rule, args.proxy_ca),
        grants=GrantVerifier.from_env())

    async def main() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        await serve(cfg, stop)

    anyio.run(main)
    return 0


def _get(args: argparse.Namespace) -> int:
    import anyio

    from damselfly.services.peer.get import run

    logging.getLogger().setLevel({"trace": "DEBUG", "warn": "WARNING"}.get(
        args.log_level, args.log_level.upper()))
    return anyio.run(run, args)

"""``damselfly preheat URL [URL …]``: ask the manager to fetch files or images into the
swarm before anyone needs them, as one job, and follow the job to its end.

Authenticates as ``client.token_for`` says: a token (``--token`` or ``DAMSELFLY_TOKEN``),
``--user`` with ``DAMSELFLY_PASSWORD``, or root of a ``damselfly up`` data dir. Registry
or origin passwords come from ``DAMSELFLY_SOURCE_PASSWORD``, never from the command line,
where other users could read them. Exits 1 with the job's reason when it fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from damselfly.services.manager.client import ManagerError, add_login_args, call, token_for
from damselfly.services.manager.sources import manager_url
from damselfly.services.runtime.units import duration, size

SOURCE_PASSWORD_ENV = "DAMSELFLY_SOURCE_PASSWORD"
SCOPES = ("single_seed_peer", "all_seed_peers", "all_peers")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``preheat`` to the ``damselfly`` parser."""
    p = sub.add_parser("preheat", help="fetch files or images into the swarm ahead of use")
    p.add_argument("urls", nargs="+", metavar="URL", help="a file URL, or an image manifest "
                   "URL (https://REGISTRY/v2/NAME/manifests/TAG); several make one job")
    p.add_argument("--type", choices=("file", "image"), default=None,
                   help="default: image when every URL is a /v2/…/manifests/… URL, else file")
    p.add_argument("--scope", choices=SCOPES, default="single_seed_peer")
    p.add_argument("--cluster", action="append", default=[], dest="clusters",
                   help="scheduler cluster id (repeat; default: every cluster)")
    p.add_argument("--platform", default="", help="for an image index, e.g. linux/arm64")
    p.add_argument("--tag", default="", help="task tag")
    p.add_argument("--application", default="", help="tenant (application) of the task")
    p.add_argument("--filtered-query-param", action="append", default=[],
                   help="query parameter left out of the task id (repeat)")
    p.add_argument("-H", "--header", action="append", default=[], help="'Name: value' (repeat)")
    p.add_argument("--username", default="", help=f"origin or registry login; the password "
                                                   f"is read from {SOURCE_PASSWORD_ENV}")
    p.add_argument("--piece-length", type=size, default=0,
                   help="bytes, or 4mib, 16kb (default: automatic)")
    p.add_argument("--manager", help="manager URL (default: the one in DIR/cluster.json)")
    p.add_argument("--data-dir", type=Path, default=Path(".data"),
                   help="cluster dir of `damselfly up` (default .data)")
    add_login_args(p)
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    p.add_argument("--timeout", type=duration, default=1800.0,
                   help="how long to wait: seconds, or 30m, 2h (default 1800)")
    p.set_defaults(run=_run)


def job_body(args: argparse.Namespace) -> dict[str, object]:
    """The Dragonfly-shaped job body for the command's arguments. Pure apart from reading
    the source password from the environment."""
    headers: dict[str, str] = {}
    for value in args.header:
        name, sep, content = value.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"bad header {value!r}: want 'Name: value'")
        headers[name.strip()] = content.strip()
    manifests = all("/v2/" in url and "/manifests/" in url for url in args.urls)
    kind = args.type or ("image" if manifests else "file")
    preheat: dict[str, object] = {
        "type": kind, "url": args.urls[0], "urls": args.urls[1:], "scope": args.scope,
        "tag": args.tag, "application": args.application, "headers": headers,
        "platform": args.platform, "filtered_query_params": "&".join(args.filtered_query_param)}
    if args.piece_length:
        preheat["piece_length"] = args.piece_length
    if args.username:
        preheat |= {"username": args.username,
                    "password": os.environ.get(SOURCE_PASSWORD_ENV, "")}
    return {"type": "preheat", "args": preheat, "scheduler_cluster_ids": args.clusters}


def _run(args: argparse.Namespace) -> int:
    base = (args.manager or manager_url(args.data_dir) or "").rstrip("/")
    if not base:
        raise ValueError(f"no manager: give --manager URL, or run `damselfly up` in "
                         f"{args.data_dir}")
    token = token_for(base, args, args.data_dir)
    job = call(base, "POST", "/oapi/v1/jobs", job_body(args), token)
    print(f"job {job['id']}: preheat {' '.join(args.urls)}", file=sys.stderr)
    if args.no_wait:
        print(job["id"])
        return 0
    deadline = time.monotonic() + args.timeout
    state = "pending"
    while True:
        try:
            status = call(base, "GET", f"/oapi/v1/jobs/{job['id']}", token=token)
            state = status["job"]["state"]
        except ManagerError as exc:
            if exc.status != 404:  # 404: the manager's projections have not caught up yet
                raise
        if state in ("succeeded", "failed"):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job['id']} still {state} after {args.timeout:g}s")
        time.sleep(0.5)
    for host in status["hosts"]:
        print(f"{host['host_id']}\t{host['task_id']}\t{host['state']}\t{host['reason'] or ''}")
    if state == "failed":
        raise RuntimeError(f"job {job['id']} failed: {status['job']['reason']}")
    print(f"job {job['id']} succeeded", file=sys.stderr)
    return 0

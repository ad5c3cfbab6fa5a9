"""Subcommands of the manager: the service itself, ``sql``, ``dashboards`` and
``projections rebuild``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import duckdb

from damselfly import dashboards
from damselfly.projections import by_name, store
from damselfly.projections.projector import replay
from damselfly.services.manager.client import add_login_args
from damselfly.services.manager.output import FORMATS, render
from damselfly.services.manager.sources import ManagerSource, resolve
from damselfly.services.runtime.natsconn import connect
from damselfly.services.runtime.signals import stop_on_signals


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this service's subcommands to the ``damselfly`` parser."""
    m = sub.add_parser("manager", help="run the manager: projections, REST API and console")
    m.add_argument("--nats", required=True, help="NATS URL")
    m.add_argument("--data-dir", type=Path, required=True, help="where the DuckDB file lives")
    m.add_argument("--host", default="127.0.0.1",
                   help="HTTP address (default 127.0.0.1; 0.0.0.0 in a container)")
    m.add_argument("--port", type=int, default=0, help="HTTP port (default: any free one)")
    m.add_argument("--ready-file", type=Path, help="write {url, db} here once serving")
    m.set_defaults(run=_run_manager)

    q = sub.add_parser("sql", help="run one SELECT against the projections")
    q.add_argument("sql", help="the query")
    _add_source(q)
    q.set_defaults(run=_run_sql)

    d = sub.add_parser("dashboards", help="list or run the SQL dashboard panels")
    verbs = d.add_subparsers(dest="verb", required=True)
    verbs.add_parser("list", help="the panels' names, charts and titles").set_defaults(
        run=_run_dashboards_list)
    r = verbs.add_parser("run", help="run one panel")
    r.add_argument("name", help="panel name (see 'dashboards list')")
    _add_source(r)
    r.set_defaults(run=_run_dashboard)

    p = sub.add_parser("projections", help="manage the DuckDB projections")
    pverbs = p.add_subparsers(dest="verb", required=True)
    b = pverbs.add_parser("rebuild", help="drop projections and replay the log from the start")
    b.add_argument("names", nargs="*", help="projections to rebuild (default: all)")
    b.add_argument("--manager", help="a running manager's URL: it rebuilds in place")
    b.add_argument("--db", type=Path, help="a stopped manager's DuckDB file (needs --nats)")
    b.add_argument("--nats", help="NATS URL, with --db")
    b.add_argument("--data-dir", type=Path, default=Path(".data"),
                   help="cluster dir whose manager to ask (default .data)")
    add_login_args(b)
    b.set_defaults(run=_run_rebuild)


def _add_source(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", type=Path, help="read this DuckDB file (the manager must be stopped)")
    p.add_argument("--manager", help="ask this running manager (http://127.0.0.1:PORT)")
    p.add_argument("--data-dir", type=Path, default=Path(".data"),
                   help="cluster dir: its running manager, else its file (default .data)")
    p.add_argument("--format", choices=FORMATS, default="table", help="output (default table)")
    add_login_args(p)


def _run_manager(args: argparse.Namespace) -> int:
    from damselfly.services.manager.server import serve

    async def main() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        await serve(args.nats, args.data_dir.resolve(), args.port, args.ready_file, stop,
                    args.host)

    try:
        asyncio.run(main())
    except duckdb.Error as exc:
        raise ValueError(str(exc).splitlines()[0]) from None
    return 0


def _run_sql(args: argparse.Namespace) -> int:
    result = resolve(args.db, args.manager, args.data_dir, args).query(args.sql)
    sys.stdout.write(render(result, args.format))
    if result.truncated:
        print(f"damselfly sql: only the first {len(result.rows)} rows; add a LIMIT or read the "
              "file of a stopped manager for all", file=sys.stderr)
    return 0


def _run_dashboards_list(args: argparse.Namespace) -> int:
    for p in dashboards.panels():
        print(f"{p.name:<24} {p.chart:<6} {p.title}")
    return 0


def _run_dashboard(args: argparse.Namespace) -> int:
    panel = dashboards.panel(args.name)
    result = resolve(args.db, args.manager, args.data_dir, args).query(panel.sql)
    if args.format == "table":
        print(f"{panel.title} ({panel.chart})")
    sys.stdout.write(render(result, args.format))
    return 0


def _run_rebuild(args: argparse.Namespace) -> int:
    chosen = by_name(args.names)
    if args.db is not None:
        if not args.nats:
            raise ValueError("--db needs --nats to replay the log from")
        count = asyncio.run(_rebuild_file(args.db, args.nats, [p.name for p in chosen]))
        print(f"rebuilt {', '.join(p.name for p in chosen)} in {args.db}: "
              f"{count} events applied")
        return 0
    source = resolve(None, args.manager, args.data_dir, args)
    if not isinstance(source, ManagerSource):  # a user's mistake, not a type error
        raise ValueError(
            "no running manager found; give --manager URL, or --db and --nats")
    reply = source.call("POST", "/api/v1/projections/rebuild",
                        {"names": [p.name for p in chosen]})
    assert isinstance(reply, dict)
    print(f"manager {source.url} is rebuilding {', '.join(reply['rebuilding'])} from the log")
    return 0


async def _rebuild_file(db: Path, nats_url: str, names: list[str]) -> int:
    con = await asyncio.to_thread(store.connect, db)
    try:
        await asyncio.to_thread(store.reset, con, by_name(names))
        nc = await connect(nats_url, "damselfly-rebuild")
        try:
            return await replay(nc.jetstream(), con)
        finally:
            await nc.drain()
    finally:
        con.close()

"""``damselfly events tail|dump``: the live log and its export, for debugging."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime
from typing import TextIO

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from damselfly.events.codec import EventDecodeError, decode, to_builtins
from damselfly.events.log import LogRecord, encode_record
from damselfly.events.streams import DLQ_STREAM, STREAM_NAMES
from damselfly.events.subjects import ALL
from damselfly.services.runtime.natsconn import connect
from damselfly.services.runtime.signals import stop_on_signals
from damselfly.services.runtime.units import duration


def parse_since(value: str, now: float) -> float:
    """``30s``/``10m``/``2h``/``1d`` ago, or an ISO-8601 time, as unix seconds."""
    try:
        return now - duration(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"--since: not a duration (10m, 2h) or an ISO time: {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def event_line(subject: str, data: bytes) -> str:
    """One human line for a message: time, subject, type and the fields that matter."""
    try:
        event = decode(data)
    except EventDecodeError as exc:
        return f"{subject} <undecodable: {exc}>"
    fields = to_builtins(event)
    kind = fields.pop("type")
    fields.pop("id")
    at = fields.pop("at")
    stamp = datetime.fromtimestamp(float(str(at)), UTC).strftime("%H:%M:%S.%f")[:-3]
    shown = " ".join(f"{k}={_short(v)}" for k, v in fields.items() if v not in ("", [], {}, None))
    return f"{stamp} {kind} {shown}"


def _short(value: object) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:16] + "…" + text[-8:]


async def tail(url: str, subject: str, out: TextIO, stop: asyncio.Event) -> None:
    nc = await connect(url, "damselfly-tail")

    async def show(msg) -> None:  # type: ignore[no-untyped-def]
        print(event_line(msg.subject, msg.data), file=out, flush=True)

    await nc.subscribe(subject, cb=show)
    try:
        await stop.wait()
    finally:
        await nc.drain()


async def dump(url: str, since: float | None, out: TextIO, idle: float = 1.0) -> int:
    """Write every stored event (since ``since``) as log records ordered by stream time."""
    nc = await connect(url, "damselfly-dump")
    js = nc.jetstream()
    records: list[LogRecord] = []
    try:
        for stream in STREAM_NAMES:
            if stream == DLQ_STREAM:
                continue
            info = await js.stream_info(stream)
            if info.state.messages == 0:
                continue
            config = ConsumerConfig(ack_policy=AckPolicy.NONE, inactive_threshold=30.0,
                                    deliver_policy=DeliverPolicy.ALL)
            if since is not None:
                config.deliver_policy = DeliverPolicy.BY_START_TIME
                config.opt_start_time = datetime.fromtimestamp(since, UTC)
            try:
                sub = await js.pull_subscribe("", stream=stream, config=config)
            except NatsTimeoutError:  # no answer: the broker refused this role the stream
                print(f"skipped {stream}: not readable with these NATS credentials",
                      file=sys.stderr)
                continue
            while True:
                try:
                    msgs = await sub.fetch(1000, timeout=idle)
                except NatsTimeoutError:
                    break
                for msg in msgs:
                    meta = msg.metadata
                    try:
                        event = decode(msg.data)
                    except EventDecodeError as exc:
                        print(f"skipped {stream} seq {meta.sequence.stream}: {exc}",
                              file=sys.stderr)
                        continue
                    records.append(LogRecord(stream=stream, seq=meta.sequence.stream,
                                             subject=msg.subject,
                                             time=meta.timestamp.timestamp(), event=event))
                if msgs and msgs[-1].metadata.num_pending == 0:
                    break
            await sub.unsubscribe()
    finally:
        await nc.drain()
    records.sort(key=lambda r: (r.time, r.stream, r.seq))
    out.writelines(encode_record(record).decode() + "\n" for record in records)
    out.flush()
    return len(records)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("events", help="tail or dump the event log")
    verbs = p.add_subparsers(dest="verb", required=True)
    t = verbs.add_parser("tail", help="print live events, one line each")
    t.add_argument("--nats", required=True, help="NATS URL")
    t.add_argument("--subject", default=ALL, help=f"subject filter (default {ALL})")
    t.set_defaults(run=_run_tail)
    d = verbs.add_parser("dump", help="export stored events as JSON lines (replayable)")
    d.add_argument("--nats", required=True, help="NATS URL")
    d.add_argument("--since", help="10m, 2h, 1d or an ISO time")
    d.set_defaults(run=_run_dump)


def _run_tail(args: argparse.Namespace) -> int:
    async def main() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        await tail(args.nats, args.subject, sys.stdout, stop)
    asyncio.run(main())
    return 0


def _run_dump(args: argparse.Namespace) -> int:
    since = parse_since(args.since, time.time()) if args.since else None
    count = asyncio.run(dump(args.nats, since, sys.stdout))
    print(f"dumped {count} events", file=sys.stderr)
    return 0

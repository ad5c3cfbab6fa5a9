"""The pure arithmetic of the swarm benchmarks: the theoretical lower bound on the time N
peers need to fetch one file, percentiles, the efficiency summary of a measured run, and
the figures Damselfly's event log gives about it.

The bound is the classic one for a file of size F spread from one server of upload U_s to N
peers of upload U and download D: the server must send every byte once (F/U_s), each peer
must receive every byte (F/D), and the swarm as a whole must move N·F through its total
upload capacity (N·F / (U_s + N·U)).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from damselfly.events.base import Event
from damselfly.events.tasks import (
    BackToSourceStarted,
    PeerRegistered,
    PieceFailed,
    PieceFinished,
    RescheduleRequested,
    singles,
)


def lower_bound(size: float, peers: int, upload: float, origin_upload: float,
                download: float = math.inf) -> float:
    """Seconds no distribution scheme can beat; ``download`` inf means no download cap.
    Raises ``ValueError`` for a non-positive size, peer count or rate."""
    if size <= 0 or peers <= 0 or upload < 0 or origin_upload <= 0 or download <= 0:
        raise ValueError("size, peers, origin upload and download must be > 0, upload >= 0")
    return max(size / origin_upload, size / download,
               peers * size / (origin_upload + peers * upload))


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100). Raises ``ValueError`` when empty."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 < q <= 100:
        raise ValueError(f"percentile {q} outside (0, 100]")
    ordered = sorted(values)
    return ordered[max(math.ceil(q / 100 * len(ordered)) - 1, 0)]


def swarm_summary(times: Sequence[float], bound: float, origin_bytes: int,
                  size: int) -> dict[str, float]:
    """Completion-time percentiles, efficiency (bound / time, 1.0 is perfect) at p50, p99
    and for the slowest peer, and origin bytes per copy of the file."""
    p50, p99, slowest = percentile(times, 50), percentile(times, 99), max(times)
    return {"p50_s": p50, "p99_s": p99, "slowest_s": slowest, "bound_s": bound,
            "eff_p50": bound / p50, "eff_p99": bound / p99, "eff_slowest": bound / slowest,
            "origin_ratio": origin_bytes / size}


def swarm_log_figures(events: Iterable[Event], t0: float, seed_host: str) -> dict[str, float]:
    """What Damselfly's own event log says about one swarm that started at wall time ``t0``
    (the seed peer runs on host ``seed_host``): when the seed and the children got their
    first piece (seconds from ``t0``), how many parents each child fetched from, and how
    often peers asked to be rescheduled, went back to the origin, or had a piece fail, and
    how many pieces children fetched from the seed."""
    host_of: dict[str, str] = {}
    first: dict[str, float] = {}
    parents: dict[str, set[str]] = {}
    by_parent: dict[str, int] = {}
    counts = {"reschedules": 0, "back_to_source": 0, "piece_failures": 0}
    for event in singles(events):
        match event:
            case PeerRegistered():
                host_of[event.peer_id] = event.host_id
            case PieceFinished():
                first.setdefault(event.peer_id, event.at - t0)
                if event.parent_id:
                    parents.setdefault(event.peer_id, set()).add(event.parent_id)
                    by_parent[event.parent_id] = by_parent.get(event.parent_id, 0) + 1
            case RescheduleRequested():
                counts["reschedules"] += 1
            case BackToSourceStarted():
                counts["back_to_source"] += 1
            case PieceFailed():
                counts["piece_failures"] += 1
    seeds = [first[p] for p, h in host_of.items() if h == seed_host and p in first]
    children = [p for p, h in host_of.items() if h != seed_host]
    child_first = [first[p] for p in children if p in first]
    used = [len(parents.get(p, ())) for p in children]
    figures: dict[str, float] = {**counts, "pieces_from_seed": sum(
        n for p, n in by_parent.items() if host_of.get(p) == seed_host)}
    if seeds:
        figures["seed_first_piece_s"] = min(seeds)
    if child_first:
        figures["child_first_piece_p50_s"] = percentile(child_first, 50)
        figures["child_first_piece_max_s"] = max(child_first)
    if used:
        figures["parents_per_child_p50"] = percentile(used, 50)
        figures["parents_per_child_min"] = min(used)
    return figures

"""The pure arithmetic of the swarm benchmarks: the theoretical lower bound on the time N
peers need to fetch one file, percentiles, and the efficiency summary of a measured run.

The bound is the classic one for a file of size F spread from one server of upload U_s to N
peers of upload U and download D: the server must send every byte once (F/U_s), each peer
must receive every byte (F/D), and the swarm as a whole must move N·F through its total
upload capacity (N·F / (U_s + N·U)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


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

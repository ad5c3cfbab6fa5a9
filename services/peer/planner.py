"""Which pieces to fetch next and from which parent. Pure: no I/O, no clock."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping


def choose_pieces(missing: Iterable[int], *, slots: int, in_flight: Mapping[int, str],
                  verifiable: Collection[int], holdings: Mapping[str, Collection[int]],
                  tie_break: Mapping[str, float]) -> list[tuple[int, str]]:
    """Up to ``slots`` ``(piece, parent)`` pairs: pieces not yet in flight whose digest is
    known (``verifiable``), rarest among the usable parents (``holdings``) first, each from
    the holder with the fewest requests in flight (``tie_break`` spreads equal ones)."""
    if slots <= 0:
        return []
    candidates = []
    for piece in missing:
        if piece in in_flight or piece not in verifiable:
            continue
        holders = [p for p, held in holdings.items() if piece in held]
        if holders:
            candidates.append((len(holders), piece, holders))
    candidates.sort(key=lambda c: (c[0], c[1]))
    load = Counter(in_flight.values())
    chosen = []
    for _, piece, holders in candidates[:slots]:
        parent = min(holders, key=lambda p: (load[p], tie_break.get(p, 0.0), p))
        load[parent] += 1
        chosen.append((piece, parent))
    return chosen

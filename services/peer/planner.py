"""Which pieces to fetch next and from which parent. Pure: no I/O, no clock."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence


def choose_pieces(missing: Iterable[int], *, slots: int, per_parent: int,
                  in_flight: Mapping[int, str], verifiable: Collection[int],
                  holdings: Mapping[str, Collection[int]], piece_rank: Sequence[float],
                  tie_break: Mapping[str, float]) -> list[tuple[int, str]]:
    """Up to ``slots`` ``(piece, parent)`` pairs, at most ``per_parent`` requests in flight
    per parent: pieces not yet in flight whose digest is known (``verifiable``), rarest
    among the usable parents (``holdings``) first and, among equally rare ones, in this
    child's own random ``piece_rank`` order (so children that see the same holders ask for
    different pieces, instead of all for the lowest); each from the holder with the fewest
    requests in flight (``tie_break`` spreads equal ones).

    The per-parent window is what spreads a child over its parents: the seed's few slots
    go to the pieces nobody else has yet, every other request to the peers that hold them,
    and a parent that delivers faster frees its slots sooner and so serves more."""
    load = Counter(in_flight.values())
    open_parents = [p for p in holdings if load[p] < per_parent]
    if slots <= 0 or not open_parents:
        return []
    candidates = []
    for piece in missing:
        if piece in in_flight or piece not in verifiable:
            continue
        holders = [p for p, held in holdings.items() if piece in held]
        if holders:
            candidates.append((len(holders), piece_rank[piece], piece, holders))
    candidates.sort()
    chosen: list[tuple[int, str]] = []
    for _, _, piece, holders in candidates:
        free = [p for p in holders if load[p] < per_parent]
        if not free:
            continue
        parent = min(free, key=lambda p: (load[p], tie_break.get(p, 0.0), p))
        load[parent] += 1
        chosen.append((piece, parent))
        if len(chosen) == slots or all(load[p] >= per_parent for p in open_parents):
            break
    return chosen

"""Relaying piece reports from parents to their children (pure; the shell runs the timer).

A child has to learn what its parents hold as they get it, to ask for their newest pieces
at once. The scheduler folds every piece report anyway, so ``Relay`` gathers the reports of
a moment and turns them, at most every ``EVERY`` seconds, into one ``HoldingsRelayed`` per
child that can use them: the new pieces of its parents, and those of the task's source
peers with their digests (what a child checks bytes against). Children that followed each
parent's events themselves got every report of every parent, each on its own JetStream
consumer: at N = 30 that was 64 MiB of control traffic for a 64 MiB file.

Which child gets what is read from the state at the moment of the relay: a child that got
new parents since a report hears of the parents' older pieces from the decision's bitmaps.
"""

from __future__ import annotations

from typing import Final

from damselfly.events.base import Event
from damselfly.events.ids import new_id
from damselfly.events.sched import HeldPieces, HoldingsRelayed
from damselfly.events.tasks import PieceFinished, PiecesFinished
from damselfly.services.scheduler.core import PENDING, RUNNING, State, Task

EVERY: Final = 0.1
"""Seconds between two relays: a tenth of a 256 KiB piece-time at 8 MiB/s is what a child
may wait to hear of a piece, and a child hears at most ten times a second."""


class Relay:
    """The reports folded since the last relay, by task and reporting peer."""

    def __init__(self, every: float = EVERY) -> None:
        self.every = every
        self._pending: dict[str, dict[str, dict[int, str]]] = {}  # task → peer → piece → digest
        self._last = float("-inf")

    def note(self, event: Event) -> None:
        """Remember the pieces a folded report names (other events are not relayed)."""
        match event:
            case PiecesFinished():
                pieces = [(p.piece, "" if p.parent_id else p.digest) for p in event.pieces]
            case PieceFinished():
                pieces = [(event.piece, "" if event.parent_id else event.digest)]
            case _:
                return
        held = self._pending.setdefault(event.task_id, {}).setdefault(event.peer_id, {})
        for piece, digest in pieces:
            held[piece] = held.get(piece) or digest

    def due(self, now: float) -> float | None:
        """Seconds until the next relay may go out (0.0: now); None while nothing waits."""
        if not self._pending:
            return None
        return max(0.0, self._last + self.every - now)

    def flush(self, state: State, now: float) -> list[HoldingsRelayed]:
        """The relays due at ``now`` (none before ``every`` has passed since the last)."""
        if self.due(now) != 0.0:
            return []
        pending, self._pending, self._last = self._pending, {}, now
        out: list[HoldingsRelayed] = []
        for task_id, reported in pending.items():
            task = state.tasks.get(task_id)
            if task is not None:
                out += _relays(state.cluster, task, reported)
        return out


def _relays(cluster: str, task: Task, reported: dict[str, dict[int, str]]
            ) -> list[HoldingsRelayed]:
    sources = [p for p in reported if p in task.peers and task.peers[p].source]
    held = {p: _held(p, pieces, source=p in sources) for p, pieces in reported.items()}
    out: list[HoldingsRelayed] = []
    for child in task.peers.values():
        if child.state not in (PENDING, RUNNING) or not child.parents:
            continue
        followed = [p for p in child.parents if p in held]
        followed += [p for p in sources if p not in followed]
        holders = [held[p] for p in followed if p != child.peer_id]
        if holders:
            out.append(HoldingsRelayed(id=new_id(), cluster=cluster, task_id=task.task_id,
                                       peer_id=child.peer_id, holders=holders))
    return out


def _held(peer_id: str, pieces: dict[int, str], *, source: bool) -> HeldPieces:
    """A reporter's pieces; the digests only when it is a source peer (the authority)."""
    return HeldPieces(peer_id=peer_id, pieces=list(pieces),
                      digests=list(pieces.values()) if source else [])

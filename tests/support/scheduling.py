"""Scripted event logs for the scheduler core: events with sequential ids and times."""

from __future__ import annotations

import hashlib
import itertools
from typing import TypedDict

from damselfly.events.base import Event
from damselfly.events.config import ClusterConfig, ClusterConfigSet
from damselfly.events.hosts import HostAnnounced, HostLeft
from damselfly.events.tasks import (
    BackToSourceStarted,
    PeerFailed,
    PeerRegistered,
    PeerSucceeded,
    PieceFailed,
    PieceFinished,
    RescheduleRequested,
    TaskMetadataReported,
)
from damselfly.services.scheduler import core

C = "default"
TASK = hashlib.sha256(b"https://origin/file").hexdigest()
PIECES = 4


class Meta(TypedDict):
    id: str
    at: float


class Script:
    """Builds events with sequential ids and times and feeds them to one state."""

    def __init__(self, state: core.State | None = None) -> None:
        self.state = state or core.new_state(C)
        self.n = itertools.count(1)
        self.log: list[Event] = []

    def _meta(self) -> Meta:
        n = next(self.n)
        return {"id": f"e{n}", "at": float(n)}

    def apply(self, event: Event) -> list[Event]:
        self.log.append(event)
        return core.step(self.state, event)

    def host(self, host_id: str, *, seed: bool = False, idc: str = "", location: str = "",
             limit: int = 50) -> list[Event]:
        return self.apply(HostAnnounced(**self._meta(), cluster=C, host_id=host_id,
                                        hostname=host_id, ip="127.0.0.1",
                                        upload_url=f"http://{host_id}:1", seed=seed, idc=idc,
                                        location=location, upload_limit=limit))

    def register(self, peer: str, host: str, priority: int = 3) -> list[Event]:
        return self.apply(PeerRegistered(**self._meta(), cluster=C, task_id=TASK, peer_id=peer,
                                         host_id=host, url="https://origin/file",
                                         priority=priority))

    def source(self, peer: str, pieces: range = range(PIECES)) -> list[Event]:
        """``peer`` fetches from the origin: started, metadata, pieces."""
        out = self.apply(BackToSourceStarted(**self._meta(), cluster=C, task_id=TASK, peer_id=peer))
        out += self.apply(TaskMetadataReported(**self._meta(), cluster=C, task_id=TASK,
                                               peer_id=peer, content_length=PIECES * 16,
                                               piece_length=16, piece_count=PIECES))
        for i in pieces:
            out += self.piece(peer, i)
        return out

    def piece(self, peer: str, i: int, parent: str = "", cost: float = 1.0) -> list[Event]:
        return self.apply(PieceFinished(**self._meta(), cluster=C, task_id=TASK, peer_id=peer,
                                        piece=i, length=16, digest=f"d{i}", parent_id=parent,
                                        cost_ms=cost))

    def piece_failed(self, peer: str, i: int, parent: str, corrupt: bool = False) -> list[Event]:
        return self.apply(PieceFailed(**self._meta(), cluster=C, task_id=TASK, peer_id=peer,
                                      piece=i, parent_id=parent, corrupt=corrupt))

    def reschedule(self, peer: str, blocklist: list[str] | None = None) -> list[Event]:
        return self.apply(RescheduleRequested(**self._meta(), cluster=C, task_id=TASK,
                                              peer_id=peer, blocklist=blocklist or []))

    def succeeded(self, peer: str) -> list[Event]:
        return self.apply(PeerSucceeded(**self._meta(), cluster=C, task_id=TASK, peer_id=peer,
                                        content_length=PIECES * 16, piece_count=PIECES))

    def failed(self, peer: str) -> list[Event]:
        return self.apply(PeerFailed(**self._meta(), cluster=C, task_id=TASK, peer_id=peer,
                                     reason="test"))

    def host_left(self, host: str) -> list[Event]:
        return self.apply(HostLeft(**self._meta(), cluster=C, host_id=host))

    def config(self, config: ClusterConfig) -> list[Event]:
        return self.apply(ClusterConfigSet(**self._meta(), cluster=C, config=config))


def scripted_swarm() -> list[Event]:
    """A busy log: seed, sources, many children, failures, departures, reschedules."""
    s = Script()
    s.host("seed", seed=True, location="eu|fr")
    for i in range(12):
        s.host(f"h{i}", idc="a" if i % 2 else "b", location="eu|fr" if i % 3 else "us|ny")
    s.register("seed-p", "seed", priority=0)
    for i in range(12):
        s.register(f"p{i}", f"h{i}", priority=(0, 3, 4)[i % 3])
    s.register("seed-p", "seed")
    s.source("seed-p")
    for i in range(12):
        for piece in range(PIECES):
            task = s.state.tasks[TASK]
            peer = task.peers.get(f"p{i}")
            if peer and peer.parents:
                s.piece(f"p{i}", piece, parent=peer.parents[piece % len(peer.parents)],
                        cost=float(5 + (i * piece) % 7))
        if i % 4 == 1:
            s.reschedule(f"p{i}", blocklist=["seed-p"])
        if i % 5 == 2:
            s.failed(f"p{i}")
        else:
            s.succeeded(f"p{i}")
    s.host_left("h3")
    return s.log

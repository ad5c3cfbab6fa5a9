"""A deterministic synthetic swarm: the events a cluster publishes while peers download.

Tests, the benchmark and demos feed these through the real projections; nothing here is
used by the manager itself. Times are derived from ``start`` so two calls give equal events.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from damselfly.events.codec import AnyEvent
from damselfly.events.config import ClusterConfig, ClusterConfigSet
from damselfly.events.hosts import HostAnnounced, HostKeepalive
from damselfly.events.jobs import (
    JobProgressed,
    JobStarted,
    JobSucceeded,
    PreheatRequested,
    SyncPeersRequested,
)
from damselfly.events.sched import (
    BackToSourceOrdered,
    ParentInfo,
    ParentsAssigned,
    SeedPeerTriggered,
)
from damselfly.events.streams import stream_configs
from damselfly.events.subjects import subject_for
from damselfly.events.tasks import (
    BackToSourceStarted,
    PeerFailed,
    PeerRegistered,
    PeerStarted,
    PeerSucceeded,
    PieceFailed,
    PieceFinished,
    TaskMetadataReported,
)


@dataclass(frozen=True)
class Swarm:
    """The shape of the synthetic load."""

    cluster: str = "c1"
    tasks: int = 2
    peers_per_task: int = 3
    pieces: int = 4
    piece_length: int = 1 << 20
    failing_peers: int = 1
    start: float = 1_800_000_000.0
    seed: int = 7


def task_id(cluster: str, n: int) -> str:
    """The id of the swarm's ``n``-th task (hex, like a real one)."""
    return hashlib.sha256(f"{cluster}/{n}".encode()).hexdigest()


def events(swarm: Swarm) -> Iterator[AnyEvent]:
    """Every event of the swarm, in the order the services would publish them."""
    rnd = random.Random(swarm.seed)
    t = swarm.start
    c = swarm.cluster
    seed_host = f"{c}-seed"
    hosts = [f"{c}-host{i}" for i in range(swarm.peers_per_task)]
    yield ClusterConfigSet(id=f"cfg-{c}", at=t, cluster=c,
                           config=ClusterConfig(candidate_parent_limit=4, weights={"load": 0.4}))
    yield HostAnnounced(id=f"ann-{seed_host}", at=t, cluster=c, host_id=seed_host,
                        hostname=seed_host, ip="127.0.0.1", upload_url="http://127.0.0.1:1",
                        seed=True, idc="idc-a", location="eu|fr")
    for i, h in enumerate(hosts):
        yield HostAnnounced(id=f"ann-{h}", at=t, cluster=c, host_id=h, hostname=h,
                            ip="127.0.0.1", upload_url=f"http://127.0.0.1:{2 + i}",
                            idc="idc-a" if i % 2 else "idc-b", location="eu|fr")
    length = swarm.pieces * swarm.piece_length
    for n in range(swarm.tasks):
        task = task_id(c, n)
        url = f"http://origin.example/files/{n}.bin"
        seed_peer = f"{seed_host}-t{n}"
        reg = f"reg-{seed_peer}"
        t += 1.0
        yield PeerRegistered(id=reg, at=t, cluster=c, task_id=task, peer_id=seed_peer,
                             host_id=seed_host, url=url, priority=0)
        yield SeedPeerTriggered(id=f"seed-{reg}", at=t + 0.004, cluster=c, task_id=task,
                                host_id=seed_host, trigger_id=reg, url=url)
        yield BackToSourceOrdered(id=f"bts-{reg}", at=t + 0.005, cluster=c, task_id=task,
                                  peer_id=seed_peer, trigger_id=reg, reason="no parent holds it")
        yield BackToSourceStarted(id=f"btss-{seed_peer}", at=t + 0.01, cluster=c, task_id=task,
                                  peer_id=seed_peer, reason="ordered")
        yield TaskMetadataReported(id=f"meta-{seed_peer}", at=t + 0.02, cluster=c, task_id=task,
                                   peer_id=seed_peer, content_length=length,
                                   piece_length=swarm.piece_length, piece_count=swarm.pieces)
        digests = [f"sha256:{n:04x}{p:060x}" for p in range(swarm.pieces)]
        for p in range(swarm.pieces):
            t += 0.5
            yield PieceFinished(id=f"pf-{seed_peer}-{p}", at=t, cluster=c, task_id=task,
                                peer_id=seed_peer, piece=p, length=swarm.piece_length,
                                digest=digests[p], cost_ms=round(rnd.uniform(5, 50), 3))
        yield PeerSucceeded(id=f"ok-{seed_peer}", at=t, cluster=c, task_id=task,
                            peer_id=seed_peer, content_length=length, piece_count=swarm.pieces,
                            bytes_from_origin=length, cost_ms=(swarm.pieces * 0.5 + 0.02) * 1000)
        parent = ParentInfo(peer_id=seed_peer, host_id=seed_host,
                            upload_url="http://127.0.0.1:1", seed=True)
        for i, h in enumerate(hosts):
            peer = f"{h}-t{n}"
            reg = f"reg-{peer}"
            t += 1.0
            began = t
            yield PeerRegistered(id=reg, at=t, cluster=c, task_id=task, peer_id=peer,
                                 host_id=h, url=url, priority=0)
            yield ParentsAssigned(id=f"pa-{reg}", at=t + rnd.uniform(0.001, 0.02), cluster=c,
                                  task_id=task, peer_id=peer, trigger_id=reg, parents=[parent],
                                  content_length=length, piece_length=swarm.piece_length,
                                  piece_digests=digests, source_peers=[seed_peer])
            yield PeerStarted(id=f"st-{peer}", at=t + 0.03, cluster=c, task_id=task, peer_id=peer)
            if i < swarm.failing_peers:
                t += 0.2
                yield PieceFailed(id=f"pfail-{peer}", at=t, cluster=c, task_id=task,
                                  peer_id=peer, piece=0, parent_id=seed_peer,
                                  reason="digest mismatch", corrupt=True)
                yield PeerFailed(id=f"fail-{peer}", at=t, cluster=c, task_id=task, peer_id=peer,
                                 reason="parent served corrupt pieces")
                continue
            for p in range(swarm.pieces):
                t += 0.1
                yield PieceFinished(id=f"pf-{peer}-{p}", at=t, cluster=c, task_id=task,
                                    peer_id=peer, piece=p, length=swarm.piece_length,
                                    digest=digests[p], parent_id=seed_peer,
                                    cost_ms=round(rnd.uniform(1, 10), 3))
            yield PeerSucceeded(id=f"ok-{peer}", at=t, cluster=c, task_id=task, peer_id=peer,
                                content_length=length, piece_count=swarm.pieces,
                                bytes_from_peers=length, cost_ms=round((t - began) * 1000, 3))
        yield HostKeepalive(id=f"ka-{seed_host}-{n}", at=t, cluster=c, host_id=seed_host,
                            uploads_running=1 + n % 3)
    job = f"{c}-job1"
    t += 1.0
    yield PreheatRequested(id=f"req-{job}", at=t, job_id=job, url="http://origin.example/0.bin",
                           scheduler_cluster_ids=[c])
    yield JobStarted(id=f"start-{job}", at=t + 0.1, job_id=job, task_ids=[task_id(c, 0)],
                     host_ids=[seed_host])
    yield JobProgressed(id=f"prog-{job}", at=t + 0.5, job_id=job, host_id=seed_host,
                        task_id=task_id(c, 0), state="succeeded")
    yield JobSucceeded(id=f"done-{job}", at=t + 0.6, job_id=job)
    census = f"{c}-job2"  # a sync_peers job: the seed host reports what it holds
    t += 1.0
    yield SyncPeersRequested(id=f"req-{census}", at=t, job_id=census, scheduler_cluster_ids=[c])
    yield JobStarted(id=f"start-{census}", at=t + 0.1, job_id=census, host_ids=[seed_host])
    for n in range(swarm.tasks):
        yield JobProgressed(id=f"prog-{census}-{n}", at=t + 0.2, job_id=census,
                            host_id=seed_host, task_id=task_id(c, n), state="succeeded",
                            reason="held")
    yield JobSucceeded(id=f"done-{census}", at=t + 5.1, job_id=census,
                       result={"hosts": "1", "tasks": str(swarm.tasks)})


_STREAM_OF_FAMILY = {c.subjects[0].split(".")[1]: c.name for c in stream_configs()
                     if c.subjects and c.name}


def by_stream(stream_events: Iterable[AnyEvent]) -> dict[str, list[tuple[int, AnyEvent]]]:
    """Events grouped by the stream they land in, numbered 1, 2, … as a stream would."""
    out: dict[str, list[tuple[int, AnyEvent]]] = {}
    for event in stream_events:
        stream = _STREAM_OF_FAMILY[subject_for(event).split(".")[1]]
        items = out.setdefault(stream, [])
        items.append((len(items) + 1, event))
    return out

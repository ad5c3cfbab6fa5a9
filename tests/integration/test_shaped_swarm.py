"""A small swarm on kernel-shaped links (one network namespace per host, each uplink shaped
by tc): every child ends with the origin's bytes, the origin serves the file about once,
and the children fetch from each other, not only from the seed. No timing is asserted;
speed is the benchmark's job (``python -m bench swarm``)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from bench import netlab
from bench.netlab import NetLab
from bench.swarm_lab import (
    Lab,
    MiB,
    download_everywhere,
    dump_events,
    origin_bytes_sent,
    start_daemons,
    start_origin,
    start_scheduler,
    write_random_file,
)
from damselfly.events.log import read_log
from damselfly.events.tasks import PeerRegistered, PieceFinished, singles
from damselfly.services.peer.digests import file_digest
from damselfly.services.peer.request import DownloadRequest

pytestmark = pytest.mark.skipif(bool(netlab.available()), reason=netlab.available())
SIZE = 8 * MiB
CHILDREN = ["c0", "c1", "c2", "c3"]


def test_children_on_shaped_links_fetch_from_each_other(tmp_path: Path) -> None:
    source = tmp_path / "blob"
    digest = write_random_file(source, SIZE)
    with NetLab(["core", "seed", *CHILDREN], rate=8 * MiB) as net, Lab("shaped") as lab:
        core = net["core"]
        origin = start_origin(lab, tmp_path, 0, core)
        nats = lab.broker_url(None, core)
        start_scheduler(lab, nats, core)
        ready = start_daemons(lab, nats, ["seed", *CHILDREN], hosts=net.hosts, seeds=["seed"])
        request = DownloadRequest(url=f"{origin}/files/blob", digest=digest)
        results = anyio.run(download_everywhere, [ready[c]["api_socket"] for c in CHILDREN],
                            request, 120.0)
        sent = origin_bytes_sent(origin, core)
        events = list(singles(r.event for r in read_log(dump_events(lab, nats, core))))
        outputs = {c: [file_digest(f, "sha256") for f in (lab.root / c / "tasks").glob("*/data")]
                   for c in CHILDREN}
    assert [r["state"] for r in results] == ["succeeded"] * len(CHILDREN)
    assert outputs == {c: [digest] for c in CHILDREN}
    assert sent <= 1.1 * SIZE, f"the origin sent {sent / SIZE:.2f}x the file"
    host_of = {e.peer_id: e.host_id for e in events if isinstance(e, PeerRegistered)}
    child_hosts = {ready[c]["host_id"] for c in CHILDREN}
    fetched = [e for e in events if isinstance(e, PieceFinished) and e.parent_id
               and host_of.get(e.peer_id) in child_hosts]
    between_children = [e for e in fetched if host_of.get(e.parent_id) in child_hosts]
    # The seed sends each piece about once (super-seeding); the rest moves between children.
    assert len(between_children) >= len(fetched) / 2, (len(between_children), len(fetched))

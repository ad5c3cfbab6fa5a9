"""Peer data-plane benchmark: one child fetching a file from one parent on loopback, against
curl fetching the same bytes from the same parent in the same run, and the child daemon's
peak RSS while it downloads the file.

Run: ``.venv/bin/python -m bench.bench_peer [--size-mib N]`` (default 2048 MiB: the peak-RSS
figure is for a 2 GiB file; about a minute here). Writes ``bench/results/peer.json``. Also
in the same run: curl's CPU time and how fast one core hashes the file with sha256 (the
child hashes every byte it takes in; curl hashes none), the two figures that bound the
ratio on a 2-core machine.
Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import resource
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg

from damselfly.events.bus import Publisher
from damselfly.events.codec import decode
from damselfly.events.grants import GrantSigner
from damselfly.events.ids import derived_id
from damselfly.events.sched import BackToSourceOrdered, ParentInfo, ParentsAssigned
from damselfly.events.taskid import piece_count, piece_length_for
from damselfly.events.tasks import PeerRegistered
from damselfly.services.launcher.broker import start_broker
from damselfly.services.peer.get import ApiClient
from damselfly.services.peer.request import DownloadRequest
from damselfly.services.runtime.natsconn import connect
from tests.support.swarm import ChildService, Origin, daemon_service, grant_keys

SECRET = "bench-secret"
CLUSTER = "bench"


def write_random_file(path: Path, size: int) -> None:
    block = os.urandom(16 << 20)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n
            block = block[1:] + block[:1]  # pieces differ, so no two digests repeat


def piece_digests(path: Path, piece_length: int) -> list[str]:
    """Each piece's ``sha256:…``, as a source peer reports them."""
    with open(path, "rb") as f:
        return [f"sha256:{hashlib.sha256(chunk).hexdigest()}"
                for chunk in iter(lambda: f.read(piece_length), b"")]


def whole_bitmap(pieces: int) -> bytes:
    """The bitmap of a peer holding every one of ``pieces`` (``docs/protocol.md``)."""
    bits = bytearray(b"\xff" * (pieces // 8))
    if pieces % 8:
        bits.append((0xFF << (8 - pieces % 8)) & 0xFF)
    return bytes(bits)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    """User plus system CPU time of this process's finished children (curl)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def sha256_seconds(path: Path) -> float:
    """How long one core takes to hash the file (from the page cache): every byte a child
    takes in is hashed once, so on a link faster than this the hash is the child's limit."""
    digest, buf = hashlib.sha256(), bytearray(1 << 16)
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(memoryview(buf)[:n])
    return time.perf_counter() - started


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def download(api: str, request: DownloadRequest) -> tuple[dict[str, Any], float]:
    client = ApiClient(api)
    try:
        started = time.perf_counter()
        status = await client.download(request)
        return status, time.perf_counter() - started
    finally:
        await client.close()


async def run(size: int, work: Path) -> dict[str, Any]:
    www = work / "www"
    www.mkdir()
    blob = www / "blob.bin"
    write_random_file(blob, size)
    piece_length = piece_length_for(size)
    broker = start_broker(work / "nats")
    origin = Origin(www)
    await origin.start()
    key, pub = grant_keys(work / "keys")  # upload grants, as `damselfly up` has them
    grants = GrantSigner.from_file(key)
    parent = daemon_service("parent", broker.url, work / "parent", SECRET, cluster=CLUSTER,
                            grant_pub=pub)
    child = daemon_service("child", broker.url, work / "child", SECRET, cluster=CLUSTER,
                           grant_pub=pub)
    services: list[ChildService] = [parent, child]
    nc = await connect(broker.url, "bench")
    try:
        for s in services:
            s.spawn()
        for s in services:
            await asyncio.to_thread(s.wait)
        publisher = Publisher(nc.jetstream())
        source: dict[str, Any] = {}

        async def scripted_scheduler(msg: Msg) -> None:
            e = decode(msg.data)
            assert isinstance(e, PeerRegistered)
            if e.host_id == parent.endpoints["host_id"]:
                decision: Any = BackToSourceOrdered(
                    id=derived_id(e.id, "bench"), cluster=CLUSTER, task_id=e.task_id,
                    peer_id=e.peer_id, trigger_id=e.id)
            else:  # as the real scheduler does: the parent's bitmap, the source's digests
                parent_host = str(parent.endpoints["host_id"])  # and a grant for the child
                decision = ParentsAssigned(
                    id=derived_id(e.id, "bench"), cluster=CLUSTER, task_id=e.task_id,
                    peer_id=e.peer_id, trigger_id=e.id, source_peers=[source["peer_id"]],
                    content_length=size, piece_length=piece_length,
                    piece_digests=await asyncio.to_thread(piece_digests, blob, piece_length),
                    parents=[ParentInfo(peer_id=source["peer_id"], host_id=parent_host,
                                        upload_url=str(parent.endpoints["upload_url"]),
                                        bitmap=whole_bitmap(piece_count(size, piece_length)),
                                        grant=grants.grant(e.task_id, e.peer_id, parent_host,
                                                           time.time() + 3600))])
            await publisher.publish(decision)

        await nc.subscribe(f"df.task.{CLUSTER}.*.*.*.*.registered", cb=scripted_scheduler)
        request = DownloadRequest(url=f"{origin.url}/blob.bin")
        source, origin_seconds = await download(str(parent.endpoints["api_url"]), request)
        assert source["state"] == "succeeded", source
        task_id = source["task_id"]

        curl_out = work / "curl.out"
        content = f"{parent.endpoints['upload_url']}/v1/tasks/{task_id}/content"
        # Both runs write the whole file to this disk: start each with no dirty pages
        # pending, so that neither pays for the writeback of what came before it.
        await asyncio.to_thread(os.sync)
        curl_cpu0 = _children_cpu()
        started = time.perf_counter()
        curl = ["curl", "-sf", "-o", str(curl_out), "-H", f"Range: bytes=0-{size - 1}",
                "-H", "Authorization: Bearer " + grants.grant(
                    task_id, "curl", str(parent.endpoints["host_id"]), time.time() + 3600),
                content]
        await asyncio.to_thread(subprocess.run, curl, check=True)
        curl_seconds = time.perf_counter() - started
        curl_cpu = _children_cpu() - curl_cpu0
        curl_out.unlink()
        hash_seconds = await asyncio.to_thread(sha256_seconds, blob)

        assert child.proc is not None and parent.proc is not None
        await asyncio.to_thread(os.sync)
        cpu_before = cpu_seconds(child.proc.pid), cpu_seconds(parent.proc.pid)
        status, child_seconds = await download(str(child.endpoints["api_url"]), request)
        assert status["state"] == "succeeded" and status["bytes_from_peers"] == size, status
        child_cpu = cpu_seconds(child.proc.pid) - cpu_before[0]
        parent_cpu = cpu_seconds(parent.proc.pid) - cpu_before[1]
        child_rss, parent_rss = peak_rss_mib(child.proc.pid), peak_rss_mib(parent.proc.pid)
    finally:
        for s in reversed(services):
            s.stop()
        await nc.close()
        await origin.stop()
        broker.stop()
    mib = 1 << 20
    return {
        "file_mib": size / mib,
        "piece_length_mib": piece_length_for(size) / mib,
        "child_from_parent_mib_s": round(size / mib / child_seconds, 1),
        "curl_from_parent_mib_s": round(size / mib / curl_seconds, 1),
        "ratio_child_to_curl": round(curl_seconds / child_seconds, 3),
        "parent_back_to_source_mib_s": round(size / mib / origin_seconds, 1),
        "child_cpu_s_during_p2p": round(child_cpu, 2),
        "curl_cpu_s": round(curl_cpu, 2),
        "sha256_one_core_mib_s": round(size / mib / hash_seconds, 1),
        "parent_cpu_s_during_p2p": round(parent_cpu, 2),
        "child_peak_rss_mib": round(child_rss, 1),
        "parent_peak_rss_mib": round(parent_rss, 1),
        "origin_bytes": origin.bytes_served,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_peer")
    parser.add_argument("--size-mib", type=int, default=2048)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp:
        results = asyncio.run(run(args.size_mib << 20, Path(tmp)))
    out = Path(__file__).parent / "results" / "peer.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

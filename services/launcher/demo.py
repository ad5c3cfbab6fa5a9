"""``damselfly demo``: a whole cluster on this machine (``damselfly up``'s) plus a local
origin; every peer downloads one file at once, and a table per peer shows the time and
where the bytes came from, with the origin's bytes against the file's size."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

import anyio

from damselfly.services.launcher.origin import Origin
from damselfly.services.launcher.up import LocalCluster
from damselfly.services.peer.get import ApiClient
from damselfly.services.peer.request import DownloadRequest

MIB = 1 << 20


async def _fetch(api: str, request: DownloadRequest, out: Path) -> dict[str, Any]:
    client = ApiClient(api)
    started = time.perf_counter()
    try:
        status = await client.download(request)
        status["seconds"] = time.perf_counter() - started
        if status["state"] == "succeeded":
            await client.export(status["task_id"], out)
        return status
    finally:
        await client.close()


async def _stat(api: str, task_id: str) -> dict[str, Any]:
    client = ApiClient(api)
    try:
        return await client._json("GET", f"/v1/tasks/{task_id}")
    finally:
        await client.close()


def _mib(n: float) -> str:
    return f"{n / MIB:.1f} MiB"


async def run_demo(data_dir: Path, peers: int, size: int) -> tuple[str, bool]:
    """Run the demo; returns the report and whether every peer got identical bytes while
    the origin served the file at most 1.1 times."""
    shutil.rmtree(data_dir, ignore_errors=True)  # a fresh cluster and origin every run
    www = data_dir / "www"
    www.mkdir(parents=True)
    blob = www / "blob.bin"
    blob.write_bytes(os.urandom(size))
    want = hashlib.sha256(blob.read_bytes()).hexdigest()
    origin = Origin(www)
    await origin.start()
    results: dict[str, dict[str, Any]] = {}
    try:
        cluster = LocalCluster(data_dir / "cluster", peers)
        await anyio.to_thread.run_sync(cluster.__enter__)
        try:
            services = cluster.endpoints["services"]
            assert isinstance(services, dict)
            request = DownloadRequest(url=f"{origin.url}/blob.bin")
            names = [f"peer-{i}" for i in range(1, peers + 1)]

            async def one(name: str) -> None:
                results[name] = await _fetch(str(services[name]["api_url"]), request,
                                             data_dir / "out" / f"{name}.bin")

            (data_dir / "out").mkdir(exist_ok=True)
            async with anyio.create_task_group() as tg:
                for name in names:
                    tg.start_soon(one, name)
            seed = await _stat(str(services["seed-peer"]["api_url"]), request.task_id())
        finally:
            await anyio.to_thread.run_sync(cluster.stop)
    finally:
        await origin.stop()
    rows = [("peer", "state", "time", "from origin", "from peers", "sha256")]
    for name, r in sorted(results.items(), key=lambda kv: int(kv[0].split("-")[1])):
        out = data_dir / "out" / f"{name}.bin"
        digest = hashlib.sha256(out.read_bytes()).hexdigest() if out.exists() else "-"
        rows.append((name, r["state"], f"{r['seconds']:.2f}s", _mib(r["bytes_from_origin"]),
                     _mib(r["bytes_from_peers"]), digest[:16]))
    rows.append(("seed-peer", seed.get("state", "?"), "", _mib(seed.get("bytes_from_origin", 0)),
                 _mib(seed.get("bytes_from_peers", 0)), ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    ratio = origin.bytes_served / size
    same = all(r["state"] == "succeeded" for r in results.values()) and all(
        hashlib.sha256((data_dir / "out" / f"{n}.bin").read_bytes()).hexdigest() == want
        for n in results)
    summary = (f"\norigin served {_mib(origin.bytes_served)} for a {_mib(size)} file: "
               f"{ratio:.2f}x its size; {peers} peers "
               f"{'all hold identical bytes (sha256 ' + want[:16] + ')' if same else 'DIFFER'}")
    return table + summary, same and ratio <= 1.1


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="a local swarm downloads one file; a table per peer")
    p.add_argument("--data-dir", type=Path, default=Path(".demo"))
    p.add_argument("--peers", type=int, default=10)
    p.add_argument("--size-mib", type=int, default=64)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    report, ok = asyncio.run(run_demo(args.data_dir.resolve(), args.peers, args.size_mib * MIB))
    print(report)
    return 0 if ok else 1

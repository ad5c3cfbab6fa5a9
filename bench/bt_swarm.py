"""The BitTorrent side of the comparison: the same file, links and peer count as the
Damselfly swarm, with Debian's opentracker (whitelisting only our torrent), mktorrent and
aria2c, each in its host's network namespace. The first seeder plays the seed peer; each
leecher keeps seeding until the run ends, as a Damselfly daemon keeps serving. No aria2
rate limit: the kernel's shaping is the only one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from bench.netlab import Host
from bench.swarm_lab import Lab, SwarmRun, fetch_in

TOOLS: Final = ("aria2c", "mktorrent", "opentracker")
# Each leecher records when it holds the whole file (before it goes on seeding); the rename
# makes the record appear whole.
_HOOK: Final = '#!/bin/sh\ndate +%s.%N > "$3.tmp" && mv "$3.tmp" "$3.done"\n'


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def info_hash(torrent: Path) -> str:
    """The torrent's info hash in hex, as aria2c reports it. Raises ``RuntimeError``."""
    shown = subprocess.run(["aria2c", "-S", str(torrent)], capture_output=True, text=True,
                           timeout=30, check=False).stdout
    found = re.search(r"Info Hash:\s*([0-9a-f]{40})", shown)
    if found is None:
        raise RuntimeError(f"aria2c -S {torrent} shows no info hash")
    return found.group(1)


def _aria2c(folder: Path, torrent: Path, host: Host, port: int, *extra: str) -> list[str]:
    return ["aria2c", f"--dir={folder}", f"--listen-port={port}", f"--interface={host.ip}",
            "--max-overall-upload-limit=0", "--seed-ratio=0.0",
            "--enable-dht=false", "--bt-enable-lpd=false", "--file-allocation=none",
            "--summary-interval=0", "--console-log-level=warn", "--bt-tracker-interval=5",
            *extra, str(torrent)]


def _seeder_active(host: Host, rpc_port: int) -> list[dict[str, str]]:
    """The seeder's active downloads from its aria2 RPC. Raises ``RuntimeError``."""
    body = json.dumps({"jsonrpc": "2.0", "id": "bench", "method": "aria2.tellActive",
                       "params": [["uploadLength", "completedLength", "totalLength"]]})
    result = json.loads(fetch_in(host, f"http://127.0.0.1:{rpc_port}/jsonrpc", body))["result"]
    assert isinstance(result, list)
    return result


def run_bittorrent(lab: Lab, source: Path, seeder: Host, leechers: Sequence[Host],
                   tracker: Host, piece_length: int, timeout: float) -> SwarmRun:
    """Seed ``source`` from ``seeder`` to an aria2c leecher on each of ``leechers``, all
    started at once; what the seeder sent stands for the origin's bytes.
    Raises ``RuntimeError`` when a tool is missing or the swarm does not finish in time."""
    if missing := missing_tools():
        raise RuntimeError(f"missing {', '.join(missing)}: apt-get install aria2 mktorrent "
                           "opentracker")
    # opentracker drops privileges, so its whitelist and the folders above must be readable.
    work = lab.root / "bt"
    work.mkdir(mode=0o755)
    os.chmod(lab.root, 0o755)
    seed_dir = work / "seed"
    seed_dir.mkdir()
    shutil.copyfile(source, seed_dir / source.name)
    tracker_port = free_port()
    torrent = work / f"{source.name}.torrent"
    subprocess.run(["mktorrent", "-a", f"http://{tracker.ip}:{tracker_port}/announce",
                    "-l", str(piece_length.bit_length() - 1), "-o", str(torrent),
                    str(seed_dir / source.name)], check=True, capture_output=True, timeout=120)
    whitelist = work / "whitelist"
    whitelist.write_text(info_hash(torrent) + "\n")
    whitelist.chmod(0o644)
    lab.spawn("opentracker", ["opentracker", "-i", tracker.ip, "-p", str(tracker_port),
                              "-P", str(tracker_port), "-w", str(whitelist)], tracker)
    hook = work / "done.sh"
    hook.write_text(_HOOK)
    hook.chmod(0o755)
    rpc_port = free_port()
    lab.spawn("bt-seeder", _aria2c(seed_dir, torrent, seeder, free_port(),
                                   "--check-integrity=true", "--enable-rpc=true",
                                   f"--rpc-listen-port={rpc_port}"), seeder)
    _wait_seeding(seeder, rpc_port, timeout=60.0)
    targets = []
    cpu0 = lab.cpu_seconds()
    t0 = time.time()
    for i, host in enumerate(leechers):
        folder = work / f"leech{i}"
        folder.mkdir()
        targets.append(folder / f"{source.name}.done")
        lab.spawn(f"bt-leech{i}", _aria2c(folder, torrent, host, free_port(),
                                          f"--on-bt-download-complete={hook}"), host)
    deadline = time.monotonic() + timeout
    while not all(t.exists() for t in targets):
        if time.monotonic() > deadline:
            done = sum(t.exists() for t in targets)
            raise RuntimeError(f"BitTorrent: {done}/{len(targets)} leechers finished in "
                               f"{timeout:.0f}s")
        time.sleep(0.2)
    times = [float(t.read_text()) - t0 for t in targets]
    uploaded = sum(int(d["uploadLength"]) for d in _seeder_active(seeder, rpc_port))
    return SwarmRun(times=times, origin_bytes=uploaded,
                    cpu_s=lab.cpu_seconds() - cpu0)


def _wait_seeding(seeder: Host, rpc_port: int, timeout: float) -> None:
    """Wait until the seeder has checked the whole file and serves it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            active = _seeder_active(seeder, rpc_port)
        except RuntimeError:
            active = []
        if active and all(d["completedLength"] == d["totalLength"] != "0" for d in active):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the BitTorrent seeder did not start in {timeout:.0f}s")

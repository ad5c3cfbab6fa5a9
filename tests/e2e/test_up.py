"""``damselfly up`` and ``damselfly events`` driven like a user, from the command line."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import nats

from damselfly.events.bus import Publisher
from damselfly.events.codec import decode
from damselfly.events.hosts import HostAnnounced
from damselfly.events.log import read_log
from damselfly.events.streams import STREAM_NAMES
from damselfly.services.runtime.natsconn import CREDS_ENV
from damselfly.services.runtime.procs import DAMSELFLY
from tests.support.wait import eventually_sync


def _descendants(pid: int) -> set[int]:
    """Every live process whose ancestry reaches ``pid`` (read from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> Any:
    """The JSON ``path`` holds once the process has written it."""
    def written() -> bool:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        return path.exists()

    eventually_sync(written, timeout=timeout)
    return json.loads(path.read_text())


def _read_lines(proc: subprocess.Popen[str], into: list[str]) -> None:
    """Every line ``proc`` prints, as it prints it (run in a thread)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        into.append(line)


async def _publish_probe(url: str, host: str, event_id: str, creds: str) -> list[str]:
    """Announce a host as a peer daemon would, with the peer role's credentials."""
    user, _, password = Path(creds).read_text().strip().partition(":")
    nc = await nats.connect(url, user=user, password=password)
    js = nc.jetstream()
    streams = {str((await js.stream_info(name)).config.name) for name in STREAM_NAMES}
    assert streams == set(STREAM_NAMES)
    await Publisher(js).publish(HostAnnounced(id=event_id, at=time.time(), cluster="default",
                                              host_id=host, hostname=host,
                                              ip="127.0.0.1", upload_url="http://127.0.0.1:9"))
    await nc.drain()
    return sorted(streams)


def test_up_writes_cluster_json_serves_events_and_leaves_nothing_behind(tmp_path: Path) -> None:
    data = tmp_path / "cluster"
    proc = subprocess.Popen([*DAMSELFLY, "up", "--data-dir", str(data), "--peers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        cluster = _wait_for(data / "cluster.json", proc)
        assert cluster["nats"].startswith("nats://127.0.0.1:")
        services = cluster["services"]
        assert sorted(services) == ["manager", "peer-1", "peer-2", "scheduler", "seed-peer"]
        for name in ("seed-peer", "peer-1", "peer-2"):
            assert {"host_id", "api_url", "upload_url", "proxy_url"} <= set(services[name])
            assert services[name]["proxy_url"].startswith("http://127.0.0.1:")
        with urllib.request.urlopen(services["manager"]["url"] + "/healthz", timeout=10) as r:
            assert json.loads(r.read()) == {"status": "ok"}
        children = _descendants(proc.pid)
        assert children, "up started no process"
        # The broker knows every role; the log's readers use the observer's credentials,
        # as `up` prints.
        creds = cluster["nats_creds"]
        # Every role, and each daemon its own user held to its host's subjects.
        assert set(creds) == {"peer", "scheduler", "manager", "jobs", "observer", "admin",
                              "seed-peer", "peer-1", "peer-2"}
        assert all(Path(p).stat().st_mode & 0o777 == 0o600 for p in creds.values())
        peer = creds["peer"]
        reader_env = {**os.environ, CREDS_ENV: creds["observer"]}
        anonymous = subprocess.run([*DAMSELFLY, "events", "dump", "--nats", cluster["nats"]],
                                   capture_output=True, timeout=60, check=False,
                                   env={k: v for k, v in os.environ.items() if k != CREDS_ENV})
        assert anonymous.returncode != 0
        assert b"refuses these credentials" in anonymous.stderr
        asyncio.run(_publish_probe(cluster["nats"], "probe", "e2e-1", peer))

        tail = subprocess.Popen([*DAMSELFLY, "events", "tail", "--nats", cluster["nats"]],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                env=reader_env)
        printed: list[str] = []
        reader = threading.Thread(target=_read_lines, args=(tail, printed), daemon=True)
        reader.start()
        # The tail reports no readiness: announce new live hosts until it shows one, then
        # one more, which it must show too.
        announced = itertools.count()

        def shows_a_live_host() -> bool:
            i = next(announced)
            asyncio.run(_publish_probe(cluster["nats"], f"live{i}", f"e2e-live-{i}", peer))
            return any("host_id=live" in line for line in printed)

        eventually_sync(shows_a_live_host, timeout=30, every=0.2)
        asyncio.run(_publish_probe(cluster["nats"], "live-last", "e2e-live-last", peer))
        eventually_sync(lambda: any("host_id=live-last" in line for line in printed))
        # A duplicate: stored once.
        asyncio.run(_publish_probe(cluster["nats"], "probe", "e2e-1", peer))
        tail.send_signal(signal.SIGINT)
        assert tail.wait(timeout=20) == 0
        reader.join(timeout=20)
        assert any("host.announced.v1" in line and "host_id=live-last" in line
                   for line in printed)

        dump = subprocess.run([*DAMSELFLY, "events", "dump", "--nats", cluster["nats"]],
                              capture_output=True, timeout=60, check=True, env=reader_env)
        log = tmp_path / "log.jsonl"
        log.write_bytes(dump.stdout)
        records = list(read_log(log))
        probes = [r for r in records if isinstance(r.event, HostAnnounced)
                  and r.event.host_id == "probe"]
        assert len(probes) == 1 and probes[0].stream == "DF_HOSTS"
        assert decode(json.dumps(json.loads(dump.stdout.splitlines()[0])["event"]).encode())

        # The CLI signs in to this cluster's manager by itself, as root, with the password
        # `up` keeps (0600) in the data dir.
        assert (data / "root.password").stat().st_mode & 0o777 == 0o600

        def probe_counted_once() -> bool:
            sql = subprocess.run([*DAMSELFLY, "sql", "SELECT count(*) AS n FROM hosts WHERE "
                                  "host_id = 'probe'", "--data-dir", str(data), "--format", "csv"],
                                 capture_output=True, text=True, timeout=60, check=False)
            return sql.returncode == 0 and sql.stdout.split() == ["n", "1"]

        eventually_sync(probe_counted_once, timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()
    assert "nats" in out.decode()
    assert f"sign in as root with the password in {data / 'root.password'}" in out.decode()
    assert f"{CREDS_ENV}={data / 'creds' / 'observer.creds'}" in out.decode()
    left = {pid for pid in children if Path(f"/proc/{pid}").exists()
            and (Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z")}
    assert not left, f"processes left behind: {left}"


def test_up_refuses_an_unreachable_nats_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run([*DAMSELFLY, "up", "--data-dir", str(tmp_path), "--nats",
                             "nats://127.0.0.1:1"], capture_output=True, timeout=60,
                            check=False)
    assert result.returncode == 1
    assert result.stderr.decode().strip().startswith("damselfly up:")
    assert len(result.stderr.decode().strip().splitlines()) == 1

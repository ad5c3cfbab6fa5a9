"""A real containerd pulls an image through the daemon's mirror, configured the way a user
does it: ``damselfly init containerd`` writes the hosts.toml, ``ctr images pull`` reads it.
The mirror has no default registry: it learns the upstream from the header hosts.toml sets.
The blobs land in the swarm (one task each) and the registry serves each of them once."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from damselfly.services.peer.daemon import DaemonConfig
from damselfly.services.peer.fetchbook import Settings
from damselfly.services.peer.oci import blob_task_id
from damselfly.services.peer.proxy import ProxyConfig
from damselfly.services.runtime.procs import DAMSELFLY, spawn, stop
from tests.support.registry import have_registry_tools, push, running_registry, write_image
from tests.support.swarm import daemon_in_process
from tests.support.wait import eventually_sync

pytestmark = [pytest.mark.anyio, pytest.mark.skipif(
    not (have_registry_tools() and shutil.which("containerd") and shutil.which("ctr")
         and os.geteuid() == 0), reason="needs root, containerd, docker-registry and skopeo")]


@pytest.fixture
def containerd() -> Iterator[str]:
    """containerd on its own folders and socket; yields the socket (kept short: unix
    socket paths are limited to 108 bytes)."""
    home = Path(tempfile.mkdtemp(prefix="ctrd-", dir="/tmp"))
    (home / "config.toml").write_text(
        f'version = 2\nroot = "{home}/root"\nstate = "{home}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{home}/c.sock"\n[ttrpc]\n  address = "{home}/t.sock"\n')
    with open(home / "containerd.log", "wb") as log:
        proc = spawn(["containerd", "--config", str(home / "config.toml")], log)
    def answering() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"containerd exited; see {home / 'containerd.log'}")
        return subprocess.run(["ctr", "-a", f"{home}/c.sock", "version"],
                              capture_output=True, timeout=10, check=False).returncode == 0

    try:
        eventually_sync(answering, timeout=30)
        yield f"{home}/c.sock"
    finally:
        stop([proc])
        shutil.rmtree(home, ignore_errors=True)


async def test_ctr_pulls_through_the_mirror_that_init_containerd_configured(
        tmp_path: Path, nats_url: str, containerd: str) -> None:
    image = write_image(tmp_path / "layout", "v1", [512 << 10, 128 << 10])
    with running_registry(tmp_path / "registry") as registry:
        ref = push(image, registry, "team/app")
        pushed = registry.blob_bytes_served()
        cfg = DaemonConfig(nats_url=nats_url, data_dir=tmp_path / "d", secret="s",
                           cluster=f"c{secrets.token_hex(4)}", ready_file=tmp_path / "ready.json",
                           proxy_port=0, proxy=ProxyConfig(),  # the header names it
                           settings=Settings(schedule_timeout=0.3))
        async with daemon_in_process(cfg) as endpoints:
            certs = tmp_path / "certs.d"
            init = await anyio.run_process(
                [*DAMSELFLY, "init", "containerd", "--certs-dir",
                 str(certs), "--registry", registry.url, "--mirror",
                 str(endpoints["proxy_url"])], check=False)
            pull = await anyio.run_process(
                ["ctr", "-a", containerd, "images", "pull", "--hosts-dir", str(certs), ref],
                check=False)
            listed = await anyio.run_process(["ctr", "-a", containerd, "images", "ls", "-q"],
                                             check=False)
        served = registry.blob_bytes_served() - pushed

    assert init.returncode == 0, init.stderr
    assert init.stdout.decode().splitlines()[0] == \
        f"created {certs / registry.host / 'hosts.toml'}"
    assert pull.returncode == 0, pull.stdout + pull.stderr
    assert listed.stdout.decode().split() == [ref]
    tasks = {p.name for p in (tmp_path / "d" / "tasks").iterdir()}
    assert {blob_task_id(d) for d in image.layers} <= tasks
    for digest, data in image.layer_bytes.items():
        assert served[digest] == len(data), (digest, served[digest])

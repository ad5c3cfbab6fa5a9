"""A real OCI registry for tests: Debian's ``docker-registry`` on a free loopback port, with
JSON logs that say how many bytes each response carried, and a multi-layer image written as
an OCI layout by hand and pushed with ``skopeo``."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from damselfly.services.peer.proxy import ProxyConfig, proxy_app
from damselfly.services.runtime.procs import DAMSELFLY, spawn, stop, wait_ready
from tests.support.control import PeerHost
from tests.support.wait import eventually_sync

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
_BLOB_URI = re.compile(r"/v2/.+/blobs/(sha256:[0-9a-f]{64})$")


def have_registry_tools() -> bool:
    return all(shutil.which(tool) for tool in ("docker-registry", "skopeo"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Registry:
    url: str
    host: str
    log_path: Path

    def blob_bytes_served(self) -> Counter[str]:
        """Bytes the registry wrote in answer to blob GETs, by digest (from its JSON log)."""
        served: Counter[str] = Counter()
        for line in self.log_path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            match = _BLOB_URI.search(entry.get("http.request.uri", ""))
            if match and entry.get("http.request.method") == "GET":
                served[match[1]] += int(entry.get("http.response.written", 0))
        return served


@contextmanager
def running_registry(root: Path) -> Iterator[Registry]:
    """``docker-registry`` storing under ``root``; stopped on exit."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: info\n  formatter: json\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n")
    log_path = root / "registry.log"
    with open(log_path, "wb") as log:
        proc = spawn(["docker-registry", "serve", str(config)], log)
    registry = Registry(f"http://127.0.0.1:{port}", f"127.0.0.1:{port}", log_path)
    def answering() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited; see {log_path}")
        with urllib.request.urlopen(f"{registry.url}/v2/", timeout=1):
            return True

    try:
        eventually_sync(answering, timeout=20, ignore=(OSError,))
        yield registry
    finally:
        stop([proc])


@dataclass(frozen=True)
class Image:
    layout: Path
    tag: str
    manifest: bytes
    layers: list[str]
    """Layer digests (``sha256:…``), base first."""
    layer_bytes: dict[str, bytes]


def _blob(layout: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return f"sha256:{digest}"


def _layer(index: int, size: int) -> tuple[bytes, str]:
    """A gzipped tar holding one file of ``size`` random bytes; and its diff id."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo(f"layer{index}.bin")
        info.size = size
        tar.addfile(info, io.BytesIO(os.urandom(size)))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), f"sha256:{hashlib.sha256(tar_bytes).hexdigest()}"


def write_image(layout: Path, tag: str, layer_sizes: list[int]) -> Image:
    """An OCI image layout with one layer per size (random, so incompressible)."""
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    layers, digests, diff_ids, layer_bytes = [], [], [], {}
    for i, size in enumerate(layer_sizes):
        data, diff_id = _layer(i, size)
        digest = _blob(layout, data)
        layers.append({"mediaType": OCI_LAYER, "digest": digest, "size": len(data)})
        digests.append(digest)
        diff_ids.append(diff_id)
        layer_bytes[digest] = data
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": _blob(layout, config), "size": len(config)},
        "layers": layers}).encode()
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": _blob(layout, manifest), "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (layout / "index.json").write_text(json.dumps(index))
    return Image(layout, tag, manifest, digests, layer_bytes)


def push(image: Image, registry: Registry, name: str) -> str:
    """Push with skopeo; returns the image reference in the registry. Raises
    ``subprocess.CalledProcessError``."""
    ref = f"{registry.host}/{name}:{image.tag}"
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
                    f"oci:{image.layout}:{image.tag}", f"docker://{ref}"],
                   check=True, capture_output=True, timeout=60)
    return ref


@contextmanager
def scheduler(nats_url: str, run: Path, cluster: str) -> Iterator[None]:
    """A scheduler process for ``cluster``, its files under ``run``."""
    ready = run / "scheduler.json"
    with open(run / "scheduler.log", "wb") as log:
        proc = spawn([*DAMSELFLY, "scheduler", "--nats", nats_url,
                      "--cluster", cluster, "--ready-file", str(ready)], log)
    try:
        wait_ready(ready, proc)
        yield
    finally:
        stop([proc])


@asynccontextmanager
async def mirror(host: PeerHost, registry: str, piece_length: int) -> AsyncIterator[str]:
    """``host``'s registry mirror in front of ``registry``, on a free loopback port."""
    runner = web.AppRunner(proxy_app(host.downloads, ProxyConfig(
        registry=registry, piece_length=piece_length)), access_log=None)
    await runner.setup()
    sock = socket.create_server(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()

"""The issue's "done when": a real registry (Debian's ``docker-registry``) holding a
multi-layer image, and ``skopeo`` on three peers pulling it at once through their daemons'
mirrors (configured the way a user does, in ``registries.conf``): the images are
byte-identical and the registry serves each blob about once."""

from __future__ import annotations

import hashlib
import secrets
import subprocess
from pathlib import Path

import pytest

from services.peer.swarm import Swarm
from tests.registry import have_registry_tools, push, running_registry, write_image

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not have_registry_tools(), reason="needs docker-registry and skopeo (make registry-tools)")]
PEERS = 3
LAYER_SIZES = [1536 << 10, 640 << 10, 200 << 10]


def registries_conf(path: Path, registry_host: str, proxy_url: str) -> Path:
    """What a user writes so that podman/skopeo pull through the local mirror."""
    path.write_text(
        "[[registry]]\n"
        f'location = "{registry_host}"\n'
        "insecure = true\n"
        "[[registry.mirror]]\n"
        f'location = "{proxy_url.removeprefix("http://")}"\n'
        "insecure = true\n")
    return path


def test_three_peers_pull_one_image_through_their_mirrors_while_the_registry_serves_it_once(
        tmp_path: Path, nats_url: str) -> None:
    image = write_image(tmp_path / "layout", "v1", LAYER_SIZES)
    with running_registry(tmp_path / "registry") as registry:
        ref = push(image, registry, "team/app")
        pushed = registry.blob_bytes_served()
        with Swarm(nats_url, tmp_path / "swarm", PEERS, cluster=f"c{secrets.token_hex(4)}",
                   daemon_args=("--proxy-port", "0", "--registry-mirror",
                                registry.url)) as swarm:
            pulls = []
            for service in swarm.peer_services:
                conf = registries_conf(tmp_path / f"{service.name}.conf", registry.host,
                                       str(service.endpoints["proxy_url"]))
                pulls.append(subprocess.Popen(
                    ["skopeo", "--registries-conf", str(conf), "copy", "--quiet",
                     f"docker://{ref}", f"dir:{tmp_path / service.name}"],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
            outputs = [p.communicate(timeout=120)[0].decode() for p in pulls]
            codes = [p.returncode for p in pulls]
        served = registry.blob_bytes_served() - pushed

    assert codes == [0] * PEERS, outputs
    for i in range(1, PEERS + 1):
        pulled = tmp_path / f"peer-{i}"
        for digest, data in image.layer_bytes.items():
            assert (pulled / digest.removeprefix("sha256:")).read_bytes() == data
        assert (pulled / "manifest.json").read_bytes() == image.manifest
    for digest, data in image.layer_bytes.items():
        assert 0 < served[digest] / len(data) <= 1.1, (digest, served[digest], len(data))
    assert all(hashlib.sha256((tmp_path / "peer-1" / d.removeprefix("sha256:")).read_bytes())
               .hexdigest() == d.removeprefix("sha256:") for d in image.layers)

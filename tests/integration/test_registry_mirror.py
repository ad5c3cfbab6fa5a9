"""The issue's "done when": a real registry (Debian's ``docker-registry``) holding a
multi-layer image, and ``skopeo`` on three peers pulling it at once through their daemons'
mirrors (configured the way a user does: ``damselfly init podman`` writes
``registries.conf``): the images are byte-identical and the registry serves each blob about
once. And once pulled, the image comes through the mirror with the registry stopped, but
never a tampered manifest."""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
from contextlib import ExitStack
from pathlib import Path

import pytest

from damselfly.services.runtime.procs import DAMSELFLY
from tests.support.registry import have_registry_tools, push, running_registry, write_image
from tests.support.swarm import Swarm

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not have_registry_tools(), reason="needs docker-registry and skopeo (make registry-tools)")]
PEERS = 3
LAYER_SIZES = [1536 << 10, 640 << 10, 200 << 10]


def registries_conf(path: Path, registry_host: str, proxy_url: str) -> Path:
    """What a user does so that podman/skopeo pull through the local mirror."""
    init = subprocess.run([*DAMSELFLY, "init", "podman", "--registries-conf", str(path),
                           "--registry", f"http://{registry_host}", "--mirror", proxy_url],
                          check=False, capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    return path


def skopeo_copy(conf: Path, ref: str, dest: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["skopeo", "--registries-conf", str(conf), "copy", "--quiet",
                           f"docker://{ref}", f"dir:{dest}"],
                          check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=120)


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


def test_with_the_registry_stopped_a_pulled_image_still_comes_through_the_mirror(
        tmp_path: Path, nats_url: str) -> None:
    image = write_image(tmp_path / "layout", "v1", LAYER_SIZES)
    with ExitStack() as registry_running:
        registry = registry_running.enter_context(running_registry(tmp_path / "registry"))
        ref = push(image, registry, "team/app")
        with Swarm(nats_url, tmp_path / "swarm", 1, cluster=f"c{secrets.token_hex(4)}",
                   daemon_args=("--proxy-port", "0", "--registry-mirror",
                                registry.url)) as swarm:
            peer = swarm.peer_services[0]
            conf = registries_conf(tmp_path / "peer.conf", registry.host,
                                   str(peer.endpoints["proxy_url"]))
            first = skopeo_copy(conf, ref, tmp_path / "first")
            registry_running.close()
            second = skopeo_copy(conf, ref, tmp_path / "second")
            # A manifest that would pull fine (its one layer is in the swarm) but is not
            # the one its digest names.
            cached = peer.data_dir / "manifests" / "sha256" / hashlib.sha256(
                image.manifest).hexdigest()
            content_type, _, body = cached.read_bytes().partition(b"\n")
            manifest = json.loads(body)
            manifest["layers"] = manifest["layers"][:1]
            cached.write_bytes(content_type + b"\n" + json.dumps(manifest).encode())
            tampered = skopeo_copy(conf, ref, tmp_path / "tampered")

    assert first.returncode == 0, first.stdout
    assert second.returncode == 0, second.stdout
    files = sorted(p.name for p in (tmp_path / "first").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "second").iterdir())
    for name in files:
        assert (tmp_path / "first" / name).read_bytes() == \
            (tmp_path / "second" / name).read_bytes(), name
    assert (tmp_path / "second" / "manifest.json").read_bytes() == image.manifest
    assert tampered.returncode != 0, tampered.stdout
    assert not (tmp_path / "tampered" / "manifest.json").exists()

"""Image preheat against a real OCI registry (Debian's ``docker-registry``, image pushed with
``skopeo``): the seed peer holds every layer afterwards, and a later pull of those layers
through another peer's registry mirror takes no layer bytes from the registry."""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import socket
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from damselfly.services.peer.oci import blob_task_id
from tests.support.control import (
    ROOT_PASSWORD,
    job_outcome,
    peer_host,
    running_manager,
)
from tests.support.registry import (
    have_registry_tools,
    mirror,
    push,
    running_registry,
    scheduler,
    write_image,
)
from tests.support.wait import eventually

pytestmark = [pytest.mark.anyio,
              pytest.mark.skipif(not have_registry_tools(),
                                 reason="needs Debian's docker-registry and skopeo")]
CLUSTER = "img"
PIECE = 64 << 10


async def test_preheat_an_image_then_pull_its_layers_from_the_swarm(
        nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = write_image(tmp_path / "layout", "v1", [200_000, 300_000])
    with (running_registry(tmp_path / "registry") as registry,
          scheduler(nats_url, tmp_path, CLUSTER)):
        push(image, registry, "team/app")
        async with (running_manager(nats_url, tmp_path / "m", monkeypatch) as m,
                    peer_host(nats_url, tmp_path / "seed", "seed", cluster=CLUSTER) as seed,
                    peer_host(nats_url, tmp_path / "peer", "peer", cluster=CLUSTER,
                              seed=False) as peer,
                    mirror(peer, registry.url, PIECE) as proxy):
            root = await eventually(lambda: m.try_sign_in("root", ROOT_PASSWORD))
            status, job = await m.call("POST", "/api/v1/jobs", {
                "type": "preheat", "scheduler_cluster_ids": [CLUSTER],
                "args": {"type": "image", "url": f"{registry.url}/v2/team/app/manifests/v1",
                         "platform": "linux/amd64", "piece_length": PIECE}}, root)
            assert status == 201, job
            done = await eventually(lambda: job_outcome(m, root, job["id"]), timeout=60)
            assert done["job"]["state"] == "succeeded", done
            for digest in image.layers:
                tf = seed.storage.get(blob_task_id(digest, PIECE))
                assert tf is not None and tf.complete
                assert tf.data_path.read_bytes() == image.layer_bytes[digest]
            preheated = registry.blob_bytes_served()
            assert all(preheated[d] == len(image.layer_bytes[d]) for d in image.layers)

            async with aiohttp.ClientSession() as session:
                for digest in image.layers:
                    async with session.get(f"{proxy}/v2/team/app/blobs/{digest}") as r:
                        assert r.status == 200
                        assert await r.read() == image.layer_bytes[digest]
            assert {d: registry.blob_bytes_served()[d] for d in image.layers} == {
                d: preheated[d] for d in image.layers}  # not one more layer byte

            status, job = await m.call("POST", "/api/v1/jobs", {
                "type": "preheat", "args": {"type": "image",
                "url": f"{registry.url}/v2/team/app/manifests/missing"}}, root)
            done = await eventually(lambda: job_outcome(m, root, job["id"]), timeout=60)
            assert done["job"]["state"] == "failed"
            assert "MANIFEST_UNKNOWN" in str(done["job"]["reason"])


@contextlib.asynccontextmanager
async def private_front(upstream: str, login: tuple[str, str]) -> AsyncIterator[str]:
    """Makes the real registry private the way hosted ones are: ``/v2/`` answers 401 with a
    bearer challenge, ``/token`` trades the basic login for a token, and only requests with
    that token reach the registry."""
    token = secrets.token_hex(16)
    basic = aiohttp.encode_basic_auth(*login)
    url = ""

    async def serve(request: web.Request) -> web.StreamResponse:
        if request.path == "/token":
            if request.headers.get("Authorization") != basic:
                return web.json_response({"details": "bad login"}, status=401)
            return web.json_response({"token": token})
        if request.headers.get("Authorization") != f"Bearer {token}":
            return web.json_response(
                {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                status=401, headers={"WWW-Authenticate":
                                     f'Bearer realm="{url}/token",service="front"'})
        wanted = {k: v for k, v in request.headers.items() if k in ("Accept", "Range")}
        async with aiohttp.ClientSession() as session, session.get(
                upstream + request.path_qs, headers=wanted) as r:
            kept = {k: v for k, v in r.headers.items()
                    if k in ("Content-Type", "Content-Range", "Docker-Content-Digest")}
            return web.Response(status=r.status, body=await r.read(), headers=kept)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.create_server(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        yield url
    finally:
        await runner.cleanup()


async def test_preheat_from_a_private_registry_with_token_auth(
        nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    login = ("puller", "registry-password-8e2a")
    image = write_image(tmp_path / "layout", "v2", [150_000])
    with running_registry(tmp_path / "registry") as registry:
        push(image, registry, "private/app")
        async with (private_front(registry.url, login) as front,
                    running_manager(nats_url, tmp_path / "m", monkeypatch) as m,
                    peer_host(nats_url, tmp_path / "seed", "private-seed",
                              cluster="private") as seed):
            root = await eventually(lambda: m.try_sign_in("root", ROOT_PASSWORD))
            args = {"type": "image", "url": f"{front}/v2/private/app/manifests/v2",
                    "piece_length": PIECE, "username": login[0], "password": "wrong"}
            job = {"type": "preheat", "scheduler_cluster_ids": ["private"], "args": args}
            status, refused = await m.call("POST", "/api/v1/jobs", job, root)
            assert status == 201
            done = await eventually(lambda: job_outcome(m, root, refused["id"]), timeout=60)
            assert done["job"]["state"] == "failed" and "401" in str(done["job"]["reason"])

            args["password"] = login[1]
            status, created = await m.call("POST", "/api/v1/jobs", job, root)
            assert status == 201
            done = await eventually(lambda: job_outcome(m, root, created["id"]), timeout=60)
            assert done["job"]["state"] == "succeeded", done
            (layer,) = image.layers
            tf = seed.storage.get(blob_task_id(layer, PIECE))
            assert tf is not None and tf.data_path.read_bytes() == image.layer_bytes[layer]


def put_index(registry_url: str, name: str, tag: str, platforms: dict[str, bytes]) -> None:
    """Make ``name:tag`` a multi-arch index over manifests already in the repository."""
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [
                 {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                  "digest": "sha256:" + hashlib.sha256(manifest).hexdigest(),
                  "size": len(manifest),
                  "platform": dict(zip(("os", "architecture"), platform.split("/"), strict=True))}
                 for platform, manifest in platforms.items()]}
    request = urllib.request.Request(
        f"{registry_url}/v2/{name}/manifests/{tag}", data=json.dumps(index).encode(),
        method="PUT", headers={"Content-Type": "application/vnd.oci.image.index.v1+json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 201


async def test_preheat_resolves_a_multi_arch_index_by_platform(
        nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    amd = write_image(tmp_path / "amd", "amd64", [120_000])
    arm = write_image(tmp_path / "arm", "arm64", [130_000])
    with running_registry(tmp_path / "registry") as registry:
        push(amd, registry, "multi/app")
        push(arm, registry, "multi/app")
        put_index(registry.url, "multi/app", "v1",
                  {"linux/amd64": amd.manifest, "linux/arm64": arm.manifest})
        async with (running_manager(nats_url, tmp_path / "m", monkeypatch) as m,
                    peer_host(nats_url, tmp_path / "seed", "multi-seed", cluster="multi") as seed):
            root = await eventually(lambda: m.try_sign_in("root", ROOT_PASSWORD))
            args = {"type": "image", "url": f"{registry.url}/v2/multi/app/manifests/v1",
                    "platform": "linux/arm64", "piece_length": PIECE}
            job = {"type": "preheat", "scheduler_cluster_ids": ["multi"], "args": args}
            status, created = await m.call("POST", "/api/v1/jobs", job, root)
            assert status == 201
            done = await eventually(lambda: job_outcome(m, root, created["id"]), timeout=60)
            assert done["job"]["state"] == "succeeded", done
            (arm_layer,), (amd_layer,) = arm.layers, amd.layers
            tf = seed.storage.get(blob_task_id(arm_layer, PIECE))
            assert tf is not None and tf.data_path.read_bytes() == arm.layer_bytes[arm_layer]
            assert seed.storage.get(blob_task_id(amd_layer, PIECE)) is None

            args["platform"] = "linux/s390x"
            status, created = await m.call("POST", "/api/v1/jobs", job, root)
            done = await eventually(lambda: job_outcome(m, root, created["id"]), timeout=60)
            assert done["job"]["state"] == "failed"
            assert "no manifest for platform linux/s390x" in str(done["job"]["reason"])

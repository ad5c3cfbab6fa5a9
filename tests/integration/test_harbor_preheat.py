"""Harbor's Dragonfly preheat provider, unchanged, against a real manager, seed peer and
registry (Debian's ``docker-registry``, the image pushed with ``skopeo``).

``Harbor`` below makes the calls of goharbor/harbor ``src/pkg/p2p/preheat/provider/
dragonfly.go`` and ``provider/client`` and decodes the answers as its Go structs would: an
integer ``id``, RFC 3339 times, the top-level ``state`` in ``PENDING``/``SUCCESS``/
``FAILURE`` (anything else is "unknown state"), and per-task results; in each of Harbor's
auth modes (OAuth bearer token, basic, a custom header)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from damselfly.services.peer.oci import blob_task_id
from tests.support.control import ROOT_PASSWORD, peer_host, running_manager
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
CLUSTER = "harbor"
STATES = ("PENDING", "SUCCESS", "FAILURE")


class HarborError(Exception):
    """What Harbor would log and show for the preheat policy."""


def _go_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise HarborError(f"json: cannot unmarshal {value!r} into Go struct field .id of type int")
    return value


def _go_time(value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str) or "T" not in value:
        raise HarborError(f"parsing time {value!r} as RFC3339")
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise HarborError(f"parsing time {value!r} as RFC3339: no zone")


def _go_job(body: Any) -> dict[str, Any]:
    """``dragonflyJobResponse`` as encoding/json fills it (unknown fields ignored)."""
    if not isinstance(body, dict):
        raise HarborError(f"json: cannot unmarshal {type(body).__name__} into the job")
    _go_int(body.get("id"))
    _go_time(body.get("created_at"))
    _go_time(body.get("updated_at"))
    if not isinstance(body.get("state", ""), str):
        raise HarborError("json: state is not a string")
    for job_state in (body.get("result") or {}).get("job_states") or []:
        if not isinstance(job_state.get("error", ""), str):
            raise HarborError("json: error is not a string")
        for result in job_state.get("results") or []:
            cluster = result.get("scheduler_cluster_id", 0)
            if isinstance(cluster, bool) or not isinstance(cluster, int) or cluster < 0:
                raise HarborError("json: scheduler_cluster_id is not a uint")
            for task in (result.get("success_tasks") or []) + (result.get("failure_tasks") or []):
                for key in ("url", "hostname", "ip", "description"):
                    if not isinstance(task.get(key) or "", str):
                        raise HarborError(f"json: {key} is not a string")
    return body


@dataclass
class Harbor:
    endpoint: str
    mode: str  # NONE, BASIC, OAUTH or CUSTOM
    data: dict[str, str]

    def _request(self, method: str, path: str, body: object = None) -> bytes:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        key = next(iter(self.data), "")
        if self.mode == "BASIC":  # the first key is the user name, its value the password
            pair = f"{key}:{self.data[key]}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        elif self.mode == "CUSTOM":
            headers[key] = self.data[key]
        elif self.mode == "OAUTH":
            headers["Authorization"] = f"Bearer {self.data['token']}"
        request = urllib.request.Request(self.endpoint.rstrip("/") + path, data=data,
                                         method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                if r.status == 208:
                    raise HarborError("status already reported")
                return bytes(r.read())
        except urllib.error.HTTPError as exc:
            raise HarborError(f"{method} {path} error: {exc.code} {exc.read()!r}") from None

    def get_health(self) -> None:
        self._request("GET", "/healthy")

    def preheat(self, url: str, headers: dict[str, str]) -> str:
        body = {"type": "preheat", "args": {
            "type": "image", "url": url, "tag": "", "filtered_query_params": "",
            "headers": headers, "scope": "", "concurrent_count": 0, "timeout": 0},
            "scheduler_cluster_ids": None}
        return str(_go_job(json.loads(self._request("POST", "/oapi/v1/jobs", body)))["id"])

    def check_progress(self, task_id: str) -> tuple[str, dict[str, Any]]:
        job = _go_job(json.loads(self._request("GET", f"/oapi/v1/jobs/{task_id}")))
        if job["state"] not in STATES:
            raise HarborError(f"unknown state: {job['state']}")
        return job["state"], job


async def test_harbor_preheats_an_image_in_every_auth_mode(
        nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = write_image(tmp_path / "layout", "v1", [180_000, 260_000])
    with (running_registry(tmp_path / "registry") as registry,
          scheduler(nats_url, tmp_path, CLUSTER)):
        push(image, registry, "harbor/app")
        async with (running_manager(nats_url, tmp_path / "m", monkeypatch) as m,
                    peer_host(nats_url, tmp_path / "seed", "seed", cluster=CLUSTER) as seed,
                    peer_host(nats_url, tmp_path / "peer", "peer", cluster=CLUSTER,
                              seed=False) as peer,
                    mirror(peer, registry.url, 0) as proxy):
            root = await eventually(lambda: m.try_sign_in("root", ROOT_PASSWORD))
            status, issued = await m.call("POST", "/api/v1/personal-access-tokens",
                                          {"name": "harbor", "scopes": ["job"]}, root)
            assert status == 201
            pat = issued["token"]
            modes = [Harbor(m.url, "OAUTH", {"token": pat}),
                     Harbor(m.url, "BASIC", {"root": ROOT_PASSWORD}),
                     Harbor(m.url, "CUSTOM", {"Authorization": f"Bearer {pat}"})]
            refused = Harbor(m.url, "BASIC", {"root": "not-the-password"})
            with pytest.raises(HarborError, match="401"):
                await anyio.to_thread.run_sync(refused.preheat, "http://x/v2/a/manifests/b", {})

            manifest = f"{registry.url}/v2/harbor/app/manifests/v1"
            for harbor in modes:
                await anyio.to_thread.run_sync(harbor.get_health)
                job_id = await anyio.to_thread.run_sync(harbor.preheat, manifest, {})
                state, job = await anyio.to_thread.run_sync(harbor.check_progress, job_id)
                assert state in STATES  # at once: no 404 while the projections catch up

                async def finished(harbor: Harbor = harbor, job_id: str = job_id
                                   ) -> dict[str, Any] | None:
                    state, job = await anyio.to_thread.run_sync(harbor.check_progress, job_id)
                    return job if state != "PENDING" else None

                job = await eventually(finished, timeout=60)
                assert job["state"] == "SUCCESS", (harbor.mode, job)
                (job_state,) = job["result"]["job_states"]
                done = [t for r in job_state["results"] for t in r["success_tasks"]]
                assert {t["url"] for t in done} >= {
                    f"{registry.url}/v2/harbor/app/blobs/{d}" for d in image.layers}
                assert all(t["hostname"] and t["ip"] for t in done)

            for digest in image.layers:
                tf = seed.storage.get(blob_task_id(digest, 0))
                assert tf is not None and tf.complete
                assert tf.data_path.read_bytes() == image.layer_bytes[digest]
            preheated = registry.blob_bytes_served()
            async with aiohttp.ClientSession() as session:
                for digest in image.layers:
                    async with session.get(f"{proxy}/v2/harbor/app/blobs/{digest}") as r:
                        assert r.status == 200
                        assert await r.read() == image.layer_bytes[digest]
            assert {d: registry.blob_bytes_served()[d] for d in image.layers} == {
                d: preheated[d] for d in image.layers}  # the pull took no layer bytes

            failing = await anyio.to_thread.run_sync(
                modes[0].preheat, f"{registry.url}/v2/harbor/app/manifests/missing", {})

            async def failed() -> dict[str, Any] | None:
                state, job = await anyio.to_thread.run_sync(modes[0].check_progress, failing)
                return job if state != "PENDING" else None

            job = await eventually(failed, timeout=60)
            assert job["state"] == "FAILURE"
            assert "MANIFEST_UNKNOWN" in job["result"]["job_states"][0]["error"]

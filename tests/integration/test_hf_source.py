"""hf:// origins against a local fake Hub that answers the Hub's own endpoints: ``resolve``
redirecting to a CDN on another origin (which refuses any request carrying the token), the
tree API in pages, and the Hub's JSON errors. A private repository needs the daemon's
HF_TOKEN; ``damselfly get -r`` lists a repository with the get process's."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import anyio
import pytest
from aiohttp import web

from damselfly.services.peer.hf import parse_hf_url
from damselfly.services.runtime.procs import DAMSELFLY
from tests.support.swarm import origin_daemon

pytestmark = pytest.mark.anyio
TOKEN = "hf_test_token"
REPO = "team/model"
FILES = {"config.json": b'{"hidden_size": 8}\n', "weights/model.safetensors": os.urandom(3 << 20),
         "weights/extra.bin": os.urandom(70 << 10), "docs/notes #1.md": b"# a name to quote\n"}


class FakeHub:
    """The Hub (private repository ``team/model``, revisions ``main`` and ``v1``) and its
    CDN. ``cdn_requests`` counts what the CDN served; ``leaked`` requests carried a token."""

    def __init__(self) -> None:
        self.cdn_requests = 0
        self.leaked = 0
        self.hub_url = self.cdn_url = ""
        self._runners: list[web.AppRunner] = []

    def _authorized(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": "Invalid credentials in Authorization header"},
                                     status=401, headers={"X-Error-Code": "GatedRepo"})
        return None

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        if refused := self._authorized(request):
            return refused
        owner, name, rev = (request.match_info[k] for k in ("owner", "name", "rev"))
        path = request.match_info["path"]
        if f"{owner}/{name}" != REPO:
            return web.json_response({"error": "Repository Not Found"}, status=404,
                                     headers={"X-Error-Code": "RepoNotFound"})
        if rev not in ("main", "v1"):
            return web.json_response({"error": f"Invalid rev id: {rev}"}, status=404,
                                     headers={"X-Error-Code": "RevisionNotFound"})
        if path not in FILES:
            return web.json_response({"error": "Entry not found"}, status=404,
                                     headers={"X-Error-Code": "EntryNotFound"})
        digest = hashlib.sha256(FILES[path]).hexdigest()
        raise web.HTTPFound(f"{self.cdn_url}/blobs/{digest}?expires=1")

    async def tree(self, request: web.Request) -> web.Response:
        """Two entries a page, as the Hub pages long listings; the third page is served
        from the CDN's origin (a page elsewhere must not get the token)."""
        on_cdn = request.path.startswith("/pages")
        if on_cdn and "Authorization" in request.headers:
            self.leaked += 1
            return web.Response(status=400, text="a token reached the CDN")
        if not on_cdn and (refused := self._authorized(request)):
            return refused
        entries = [{"type": "directory", "path": "weights"}] + [
            {"type": "file", "path": p, "size": len(b)} for p, b in FILES.items()]
        folder = request.match_info.get("folder", "")
        entries = [e for e in entries if str(e["path"]).startswith(folder)]
        page = int(request.query.get("cursor", "0"))
        headers = {}
        if page + 2 < len(entries):
            base = f"{self.cdn_url}/pages" if page + 2 == 4 else self.hub_url
            path = request.path.removeprefix("/pages")
            headers["Link"] = f'<{base}{path}?recursive=true&cursor={page + 2}>; rel="next"'
        return web.json_response(entries[page:page + 2], headers=headers)

    async def blob(self, request: web.Request) -> web.StreamResponse:
        if "Authorization" in request.headers:
            self.leaked += 1
            return web.Response(status=400, text="a token reached the CDN")
        self.cdn_requests += 1
        by_digest = {hashlib.sha256(b).hexdigest(): b for b in FILES.values()}
        body = by_digest.get(request.match_info["digest"])
        if body is None:
            return web.Response(status=404)
        start, stop = 0, len(body)
        if rng := request.http_range:
            start, stop = rng.start or 0, min(rng.stop or len(body), len(body))
            return web.Response(status=206, body=body[start:stop], headers={
                "Content-Range": f"bytes {start}-{stop - 1}/{len(body)}"})
        return web.Response(body=body)

    async def __aenter__(self) -> FakeHub:
        hub = web.Application()
        hub.router.add_get("/{owner}/{name}/resolve/{rev}/{path:.+}", self.resolve)
        hub.router.add_get("/api/models/{owner}/{name}/tree/{rev}", self.tree)
        hub.router.add_get("/api/models/{owner}/{name}/tree/{rev}/{folder:.+}", self.tree)
        cdn = web.Application()
        cdn.router.add_get("/blobs/{digest}", self.blob)
        cdn.router.add_get("/pages/api/models/{owner}/{name}/tree/{rev}", self.tree)
        urls = []
        for app in (hub, cdn):
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self._runners.append(runner)
            urls.append(f"http://127.0.0.1:{runner.addresses[0][1]}")
        self.hub_url, self.cdn_url = urls
        return self

    async def __aexit__(self, *exc: object) -> None:
        for runner in self._runners:
            await runner.cleanup()


def hub_env(hub: FakeHub) -> dict[str, str]:
    return {"HF_ENDPOINT": hub.hub_url, "HF_TOKEN": TOKEN}


async def get(api: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    done = await anyio.run_process([*DAMSELFLY, "get", "--no-progress", "--endpoint", api,
                                    *args], check=False, env={**os.environ, **(env or {})})
    return done.returncode, done.stderr.decode()


def test_hf_urls_name_the_hubs_files() -> None:
    f = parse_hf_url("hf://datasets/team/data@refs/pr/1/train/part-0.parquet")
    assert (f.kind, f.repo) == ("datasets", "team/data")
    assert parse_hf_url("hf://team/model@v1/weights/a.bin").revision == "v1"
    assert parse_hf_url("hf://team/model/config.json").revision == "main"
    with pytest.raises(ValueError, match="want hf://"):
        parse_hf_url("hf://team")


async def test_a_file_comes_from_the_cdn_and_the_token_stays_with_the_hub(
        tmp_path: Path, nats_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with FakeHub() as hub, \
            origin_daemon(tmp_path, nats_url, monkeypatch, hub_env(hub)) as api:
        out = tmp_path / "model.safetensors"
        rc, err = await get(api, f"hf://{REPO}@v1/weights/model.safetensors", "-O", str(out))
        assert rc == 0, err
        assert out.read_bytes() == FILES["weights/model.safetensors"]
        rc, err = await get(api, f"hf://{REPO}/missing.bin", "-O", str(tmp_path / "m"))
        assert (rc, err) == (1, f"damselfly get: hf://{REPO}/missing.bin: back-to-source "
                                f"failed: hf://{REPO}/missing.bin: Entry not found (404)\n")
        rc, err = await get(api, "hf://other/model/x.bin", "-O", str(tmp_path / "o"))
        assert rc == 1 and err.endswith("hf://other/model/x.bin: Repository Not Found (404)\n")
    assert hub.cdn_requests >= 1 and hub.leaked == 0
    assert not (tmp_path / "m").exists()


async def test_a_whole_repository_with_dash_r(
        tmp_path: Path, nats_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with FakeHub() as hub, \
            origin_daemon(tmp_path, nats_url, monkeypatch, hub_env(hub)) as api:
        out = tmp_path / "repo"
        rc, err = await get(api, "-r", f"hf://{REPO}@v1", "-O", str(out),
                            env=hub_env(hub))
        assert rc == 0, err
        rc, err = await get(api, "-r", f"hf://{REPO}", "-O", str(tmp_path / "anon"),
                            env={**hub_env(hub), "HF_TOKEN": ""})
    assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()} \
        == FILES
    assert rc == 1 and "401" in err and len(err.splitlines()) == 1
    assert hub.leaked == 0  # the listing's page on the CDN's origin got no token

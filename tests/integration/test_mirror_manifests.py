"""The mirror's manifest cache in a daemon run in-process, against an origin laid out like a
registry that can fail on purpose: manifests by digest come from the cache, tags from the
upstream first and from the cache only when it cannot answer; a 401 or 404 is never
masked; a tampered cached manifest is never served."""

from __future__ import annotations

import hashlib
from pathlib import Path

import aiohttp
import pytest

from damselfly.services.peer.proxy import STALE_HEADER
from tests.support.mirror import NAME, mirror

pytestmark = pytest.mark.anyio
FIRST = b'{"schemaVersion": 2, "layers": []}'
SECOND = b'{"schemaVersion": 2, "layers": [], "annotations": {"v": "2"}}'


def digest_of(body: bytes) -> str:
    return f"sha256:{hashlib.sha256(body).hexdigest()}"


async def fetch(http: aiohttp.ClientSession, url: str, method: str = "GET"
                ) -> tuple[int, bytes, dict[str, str]]:
    async with http.request(method, url) as answer:
        return answer.status, await answer.read(), dict(answer.headers)


async def test_tags_ask_the_upstream_first_and_fall_back_to_the_cache_only_when_it_fails(
        tmp_path: Path, nats_url: str) -> None:
    manifests = tmp_path / "www" / "v2" / NAME / "manifests"
    async with mirror(tmp_path, nats_url) as m, aiohttp.ClientSession() as http:
        manifests.mkdir(parents=True)
        (manifests / "v1").write_bytes(FIRST)
        tag, by_digest = f"{m.url}/v2/{NAME}/manifests/v1", f"{m.url}/v2/{NAME}/manifests/"
        first = await fetch(http, tag)
        asked = len(m.origin.requests)
        from_cache = await fetch(http, by_digest + digest_of(FIRST))
        head = await fetch(http, by_digest + digest_of(FIRST), "HEAD")
        assert len(m.origin.requests) == asked  # content-addressed: never asked again

        (manifests / "v1").write_bytes(SECOND)  # the tag moved
        moved = await fetch(http, tag)
        m.origin.faults.fail_always = True
        failing = await fetch(http, tag)
        failing_head = await fetch(http, tag, "HEAD")
        m.origin.faults.fail_status = 401
        refused = await fetch(http, tag)
        m.origin.faults.fail_always = False
        (manifests / "v1").unlink()
        gone = await fetch(http, tag)

        await m.origin.stop()
        down = await fetch(http, tag)
        ping = await fetch(http, f"{m.url}/v2/")
        unknown = await fetch(http, f"{m.url}/v2/{NAME}/manifests/v9")
        first_down = await fetch(http, by_digest + digest_of(FIRST))

    assert first[:2] == (200, FIRST) and STALE_HEADER not in first[2]
    assert from_cache[:2] == (200, FIRST)
    assert from_cache[2]["Docker-Content-Digest"] == digest_of(FIRST)
    assert from_cache[2]["Content-Type"] == first[2]["Content-Type"]
    assert head[:2] == (200, b"") and head[2]["Content-Length"] == str(len(FIRST))
    assert head[2]["Docker-Content-Digest"] == digest_of(FIRST)
    assert moved[:2] == (200, SECOND) and STALE_HEADER not in moved[2]
    for stale in (failing, down):
        assert stale[:2] == (200, SECOND) and stale[2][STALE_HEADER] == "1"
        assert stale[2]["Docker-Content-Digest"] == digest_of(SECOND)
    assert failing_head[:2] == (200, b"") and failing_head[2][STALE_HEADER] == "1"
    assert refused[0] == 401 and gone[0] == 404
    assert ping[:2] == (200, b"{}") and ping[2][STALE_HEADER] == "1"
    assert unknown[0] == 503 and b"UNAVAILABLE" in unknown[1]
    assert first_down[:2] == (200, FIRST)


async def test_a_tampered_cached_manifest_is_never_served(
        tmp_path: Path, nats_url: str) -> None:
    manifests = tmp_path / "www" / "v2" / NAME / "manifests"
    async with mirror(tmp_path, nats_url) as m, aiohttp.ClientSession() as http:
        manifests.mkdir(parents=True)
        (manifests / "v1").write_bytes(FIRST)
        (manifests / digest_of(FIRST)).write_bytes(FIRST)
        tag, by_digest = (f"{m.url}/v2/{NAME}/manifests/v1",
                          f"{m.url}/v2/{NAME}/manifests/{digest_of(FIRST)}")
        assert (await fetch(http, tag))[:2] == (200, FIRST)
        cached = m.data_dir / "manifests" / "sha256" / digest_of(FIRST).removeprefix("sha256:")
        content_type = cached.read_bytes().partition(b"\n")[0]
        tampered = content_type + b"\n" + SECOND
        cached.write_bytes(tampered)
        repaired = await fetch(http, by_digest)  # the upstream is asked again
        cached.write_bytes(tampered)
        await m.origin.stop()
        down_by_digest = await fetch(http, by_digest)
        cached.write_bytes(tampered)
        down_by_tag = await fetch(http, tag)

    assert repaired[:2] == (200, FIRST)
    for answer in (down_by_digest, down_by_tag):
        assert answer[0] == 503 and SECOND not in answer[1]
    assert not cached.exists()


async def test_a_hung_upstream_costs_one_timeout_not_one_per_request(
        tmp_path: Path, nats_url: str) -> None:
    """A registry that takes connections and never answers (a stopped process): the first
    request waits out the mirror's timeout, the ones after it get the cached manifest without
    asking; once the upstream has answered again, tags are asked of it first again."""
    manifests = tmp_path / "www" / "v2" / NAME / "manifests"
    async with mirror(tmp_path, nats_url) as m, aiohttp.ClientSession() as http:
        manifests.mkdir(parents=True)
        (manifests / "v1").write_bytes(FIRST)
        tag = f"{m.url}/v2/{NAME}/manifests/v1"
        assert (await fetch(http, tag))[:2] == (200, FIRST)
        m.origin.faults.hang = True
        timed_out = await fetch(http, tag)  # waits out the 5 s timeout, then the cache
        asked = len(m.origin.requests)
        later = [await fetch(http, tag), await fetch(http, f"{m.url}/v2/")]
        not_asked = len(m.origin.requests) == asked
        m.origin.faults.hang = False
        (manifests / "v1").write_bytes(SECOND)
        (manifests / digest_of(SECOND)).write_bytes(SECOND)
        # a manifest the cache lacks is always asked for; its answer shows the upstream is back
        assert (await fetch(http, f"{m.url}/v2/{NAME}/manifests/{digest_of(SECOND)}"))[0] == 200
        back = await fetch(http, tag)

    assert timed_out[:2] == (200, FIRST) and timed_out[2][STALE_HEADER] == "1"
    assert all(r[0] == 200 and r[2][STALE_HEADER] == "1" for r in later) and not_asked
    assert back[:2] == (200, SECOND) and STALE_HEADER not in back[2]

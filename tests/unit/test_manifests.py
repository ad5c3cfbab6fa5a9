"""The registry mirror's manifest cache on disk, and which paths are manifests. No sockets."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from damselfly.services.peer.manifests import CachedManifest, ManifestCache
from damselfly.services.peer.oci import ManifestRef, parse_manifest_path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
UPSTREAM = "http://127.0.0.1:5000"


def digest_of(body: bytes) -> str:
    return f"sha256:{hashlib.sha256(body).hexdigest()}"


def test_manifest_paths_are_a_repository_and_a_tag_or_sha256_digest() -> None:
    digest = digest_of(b"m")
    by_digest = parse_manifest_path(f"/v2/team/app/manifests/{digest}")
    by_tag = parse_manifest_path("/v2/app/manifests/v1.2_rc-3")
    assert by_digest == ManifestRef("team/app", digest) and by_digest.by_digest
    assert by_tag == ManifestRef("app", "v1.2_rc-3") and not by_tag.by_digest
    for other in ("/v2/app/manifests/sha512:" + "a" * 128, "/v2/app/manifests/.hidden",
                  "/v2/app/manifests/", "/v2/app/blobs/" + digest, "/v2/"):
        assert parse_manifest_path(other) is None, other


def test_a_kept_manifest_comes_back_with_its_type_and_a_tag_finds_it(tmp_path: Path) -> None:
    cache = ManifestCache(tmp_path / "m")
    body = b'{"schemaVersion": 2}'
    assert cache.put(body, OCI_MANIFEST, expected=digest_of(b"other")) == ""
    assert cache.get(digest_of(body)) is None and not cache.knows(UPSTREAM)
    digest = cache.put(body, OCI_MANIFEST)
    cache.set_tag(UPSTREAM, "team/app", "v1", digest)
    kept = CachedManifest(digest, OCI_MANIFEST, body)
    assert cache.get(digest) == kept
    assert cache.tagged(UPSTREAM, "team/app", "v1") == kept
    assert cache.tagged(UPSTREAM, "team/app", "v2") is None
    assert cache.tagged("http://elsewhere", "team/app", "v1") is None
    assert cache.knows(UPSTREAM) and not cache.knows("http://elsewhere")
    assert ManifestCache(tmp_path / "m").get(digest) == kept  # a restarted daemon


def test_a_tampered_manifest_is_never_returned_and_is_dropped(tmp_path: Path) -> None:
    cache = ManifestCache(tmp_path / "m")
    digest = cache.put(b'{"layers": []}', OCI_MANIFEST)
    cache.set_tag(UPSTREAM, "app", "latest", digest)
    path = tmp_path / "m" / "sha256" / digest.removeprefix("sha256:")
    path.write_bytes(f"{OCI_MANIFEST}\n".encode() + b'{"layers": ["evil"]}')
    assert cache.tagged(UPSTREAM, "app", "latest") is None
    assert not path.exists() and cache.get(digest) is None


def test_a_write_interrupted_by_a_crash_leaves_no_file_behind(tmp_path: Path) -> None:
    ManifestCache(tmp_path / "m")
    leftover = tmp_path / "m" / "sha256" / "tmpab12cd.tmp"
    leftover.write_bytes(b"half a manif")
    ManifestCache(tmp_path / "m")
    assert list((tmp_path / "m").rglob("*.*")) == []


def test_the_least_recently_used_go_first_once_the_bound_is_passed(tmp_path: Path) -> None:
    line = len(OCI_MANIFEST) + 1
    cache = ManifestCache(tmp_path / "m", max_bytes=3 * (line + 100))
    bodies = [bytes([i]) * 100 for i in range(4)]
    digests = []
    for age, body in enumerate(bodies[:3]):
        digests.append(cache.put(body, OCI_MANIFEST))
        path = tmp_path / "m" / "sha256" / digests[-1].removeprefix("sha256:")
        os.utime(path, (1000 + age, 1000 + age))
    assert cache.get(digests[0]) is not None  # read now: the most recently used
    digests.append(cache.put(bodies[3], OCI_MANIFEST))
    assert [cache.get(d) is not None for d in digests] == [True, False, True, True]

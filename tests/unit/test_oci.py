"""OCI distribution helpers: blob paths, which upstream a request is for, byte ranges and
bearer-token challenges. Pure, no sockets."""

from __future__ import annotations

import hashlib

import pytest

from damselfly.events.taskid import task_id
from damselfly.services.peer.oci import (
    DOCKER_HUB,
    BlobRef,
    RangeError,
    basic_auth,
    blob_task_id,
    blob_url,
    choose_upstream,
    parse_blob_path,
    parse_challenge,
    parse_range,
    registry_url,
    token_url,
)

DIGEST = f"sha256:{hashlib.sha256(b'layer').hexdigest()}"


def test_blob_paths_name_the_repository_and_digest_and_nothing_else_is_a_blob() -> None:
    assert parse_blob_path(f"/v2/library/nginx/blobs/{DIGEST}") == BlobRef("library/nginx",
                                                                           DIGEST)
    assert parse_blob_path(f"/v2/a/b/c/blobs/{DIGEST}") == BlobRef("a/b/c", DIGEST)
    assert parse_blob_path(f"/v2/library/nginx/manifests/{DIGEST}") is None
    assert parse_blob_path("/v2/library/nginx/blobs/uploads/") is None
    assert parse_blob_path(f"/v2/x/blobs/{DIGEST}extra") is None


def test_the_header_wins_then_the_namespace_then_the_default() -> None:
    default = "http://127.0.0.1:5000"
    assert choose_upstream("http://mirror.example:8080", "ghcr.io", default) \
        == "http://mirror.example:8080"
    assert choose_upstream("quay.io", "", default) == "https://quay.io"
    assert choose_upstream("", "ghcr.io", default) == "https://ghcr.io"
    assert choose_upstream("", "docker.io", default) == DOCKER_HUB
    assert choose_upstream("", "127.0.0.1:5000", default) == default  # keeps plain http
    assert choose_upstream("", "r.local:80", default, ("http://r.local:80",)) \
        == "http://r.local:80"
    assert choose_upstream("", "", default) == default


def test_no_upstream_or_a_malformed_one_is_a_one_line_error() -> None:
    with pytest.raises(ValueError, match="no upstream registry"):
        choose_upstream("", "", "")
    for bad in ("ftp://x", "https://x/path", "http://", "https://x?q=1"):
        with pytest.raises(ValueError, match="bad registry"):
            registry_url(bad)


def test_one_blob_is_one_task_whichever_registry_serves_it() -> None:
    a = blob_url("https://a.example", BlobRef("x/y", DIGEST))
    b = blob_url("http://b.example:5000", BlobRef("z", DIGEST))
    assert a == f"https://a.example/v2/x/y/blobs/{DIGEST}" and a != b
    assert blob_task_id(DIGEST) == task_id(DIGEST)
    assert blob_task_id(DIGEST, 1 << 20) != blob_task_id(DIGEST)
    assert blob_task_id(DIGEST) != task_id(a)


@pytest.mark.parametrize(("header", "expected"), [
    ("", None), ("bytes=0-9", (0, 10)), ("bytes=5-", (5, 100)), ("bytes=-10", (90, 100)),
    ("bytes=90-500", (90, 100)), ("bytes=-500", (0, 100)),
])
def test_ranges_become_half_open_intervals_inside_the_blob(
        header: str, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=9-3", "items=0-1", "bytes=0-1,4-5",
                                    "bytes=a-b", "bytes=-0"])
def test_unsatisfiable_ranges_are_refused(header: str) -> None:
    with pytest.raises(RangeError):
        parse_range(header, 100)


def test_a_bearer_challenge_says_where_to_get_a_token() -> None:
    challenge = parse_challenge('Bearer realm="https://auth.docker.io/token",'
                                'service="registry.docker.io"')
    assert challenge.scheme == "bearer"
    assert token_url(challenge, "repository:library/nginx:pull") == (
        "https://auth.docker.io/token?service=registry.docker.io"
        "&scope=repository%3Alibrary%2Fnginx%3Apull")
    with pytest.raises(ValueError, match="not a bearer challenge"):
        token_url(parse_challenge('Basic realm="x"'), "repository:a:pull")


def test_a_login_is_a_basic_authorization_value() -> None:
    assert basic_auth("alice", "wonderland") == "Basic YWxpY2U6d29uZGVybGFuZA=="

"""The pure parts of s3:// origins: configuration from the environment, object URLs and
S3's error answers."""

from __future__ import annotations

import pytest

from damselfly.services.peer.s3 import object_url, s3_config, s3_error
from damselfly.services.peer.sigv4 import Credentials
from damselfly.services.peer.sources import SourceError


def test_config_from_the_environment() -> None:
    anonymous = s3_config({})
    assert (anonymous.endpoint, anonymous.region, anonymous.credentials) == (
        "https://s3.us-east-1.amazonaws.com", "us-east-1", None)
    assert s3_config({"AWS_DEFAULT_REGION": "eu-west-1"}).endpoint == \
        "https://s3.eu-west-1.amazonaws.com"
    config = s3_config({"AWS_REGION": "ap-south-1", "AWS_DEFAULT_REGION": "eu-west-1",
                        "AWS_ENDPOINT_URL": "http://minio:9000/", "AWS_ENDPOINT_URL_S3": "",
                        "AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "s",
                        "AWS_SESSION_TOKEN": "t"})
    assert (config.endpoint, config.region, config.credentials) == (
        "http://minio:9000", "ap-south-1", Credentials("AKIA", "s", "t"))
    assert s3_config({"AWS_ENDPOINT_URL": "http://a", "AWS_ENDPOINT_URL_S3": "http://b"}
                     ).endpoint == "http://b"


@pytest.mark.parametrize("env", [{"AWS_ACCESS_KEY_ID": "AKIA"},
                                 {"AWS_SECRET_ACCESS_KEY": "s"}])
def test_half_a_key_pair_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        s3_config(env)


def test_object_urls_are_path_style_and_percent_encoded() -> None:
    assert object_url("http://h:9000", "s3://models/llama/w 0+1.bin?versionId=3") == \
        "http://h:9000/models/llama/w%200%2B1.bin?versionId=3"
    assert object_url("http://h", "s3://b/a%20b") == "http://h/b/a%20b"
    for bad in ("s3://bucket", "s3://bucket/", "s3:///key"):
        with pytest.raises(SourceError, match="want s3://BUCKET/KEY") as caught:
            object_url("http://h", bad)
        assert not caught.value.transient


def xml(code: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>m</Message><RequestId>r</RequestId></Error>").encode()


@pytest.mark.parametrize(("status", "body", "line", "transient"), [
    (404, xml("NoSuchKey"), "s3://b/k: NoSuchKey (404)", False),
    (403, xml("AccessDenied"), "s3://b/k: AccessDenied (403)", False),
    (403, xml("SignatureDoesNotMatch"), "s3://b/k: SignatureDoesNotMatch (403)", False),
    (503, xml("SlowDown"), "s3://b/k: SlowDown (503)", True),
    (500, xml("InternalError"), "s3://b/k: InternalError (500)", True),
    (400, xml("RequestTimeout"), "s3://b/k: RequestTimeout (400)", True),
    (502, b"<html>bad gateway</html", "s3://b/k: Bad Gateway (502)", True),
    (403, b"", "s3://b/k: Forbidden (403)", False),
])
def test_errors_are_one_line_with_s3s_code(status: int, body: bytes, line: str,
                                           transient: bool) -> None:
    error = s3_error("s3://b/k", status, body)
    assert (str(error), error.transient) == (line, transient)

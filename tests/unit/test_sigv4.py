"""SigV4 against the example values AWS publishes: the IAM ListUsers walk-through of the
General Reference and the S3 header-signing examples of the S3 API Reference."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from damselfly.services.peer.sigv4 import (
    EMPTY_SHA256,
    Credentials,
    canonical_request,
    sign,
    signing_key,
)

S3_KEYS = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
S3_DAY = datetime(2013, 5, 24, tzinfo=UTC)


def signature(headers: dict[str, str]) -> str:
    return headers["Authorization"].rpartition("Signature=")[2]


def test_signing_key_of_the_general_reference() -> None:
    key = signing_key("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215", "us-east-1", "iam")
    assert key.hex() == "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"


def test_iam_list_users_example() -> None:
    url = "https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08"
    content_type = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    headers = sign("GET", url, content_type,
                   Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
                   region="us-east-1", service="iam",
                   now=datetime(2015, 8, 30, 12, 36, tzinfo=UTC))
    request, _ = canonical_request("GET", url, {k: v for k, v in headers.items()
                                                if k != "Authorization"}, EMPTY_SHA256)
    assert hashlib.sha256(request.encode()).hexdigest() == \
        "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
    assert headers["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, "
        "SignedHeaders=content-type;host;x-amz-date, "
        "Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7")
    assert headers["Host"] == "iam.amazonaws.com"
    assert headers["X-Amz-Date"] == "20150830T123600Z"


@pytest.mark.parametrize(("path", "extra", "want"), [
    ("/test.txt", {"Range": "bytes=0-9"},  # GET Object
     "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"),
    ("/?lifecycle", {},  # GET Bucket Lifecycle: a parameter without a value
     "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"),
    ("/?max-keys=2&prefix=J", {},  # GET Bucket (List Objects)
     "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"),
])
def test_s3_examples(path: str, extra: dict[str, str], want: str) -> None:
    headers = sign("GET", f"https://examplebucket.s3.amazonaws.com{path}",
                   {**extra, "x-amz-content-sha256": EMPTY_SHA256}, S3_KEYS,
                   region="us-east-1", service="s3", now=S3_DAY)
    assert signature(headers) == want


def test_a_session_token_is_sent_and_signed() -> None:
    keys = Credentials("AKIAIOSFODNN7EXAMPLE", "secret", session_token="token/with+chars")
    headers = sign("GET", "http://127.0.0.1:9000/b/k", {}, keys, region="eu-west-1",
                   service="s3", now=S3_DAY)
    assert headers["X-Amz-Security-Token"] == "token/with+chars"
    assert headers["Host"] == "127.0.0.1:9000"
    assert "SignedHeaders=host;x-amz-date;x-amz-security-token," in headers["Authorization"]
    assert "/20130524/eu-west-1/s3/aws4_request," in headers["Authorization"]


def test_secrets_stay_out_of_repr() -> None:
    keys = Credentials("AKID", "the-secret", "the-token")
    assert "the-secret" not in repr(keys) and "the-token" not in repr(keys)

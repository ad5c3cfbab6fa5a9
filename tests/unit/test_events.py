"""The event catalogue: stable encodings, typed errors, subjects, secrets."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from damselfly.events.base import tag_of
from damselfly.events.codec import EventDecodeError, decode, decode_delivered, encode, event_types
from damselfly.events.hosts import HostAnnounced
from damselfly.events.jobs import JobProgressed
from damselfly.events.secrets import public_headers, public_url
from damselfly.events.streams import stream_configs
from damselfly.events.subjects import (
    PARTITIONS,
    SubjectError,
    partition,
    safe_token,
    subject_for,
    task_subject,
)
from damselfly.events.tasks import PeerRegistered, PieceFinished

SAMPLES = Path(__file__).parent / "samples"
TASK = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def _samples() -> list[bytes]:
    lines: list[bytes] = []
    for path in sorted(SAMPLES.glob("events-*.jsonl")):
        lines += [line for line in path.read_bytes().splitlines() if line.strip()]
    return lines


def test_every_event_type_has_a_stored_sample() -> None:
    stored = {msgspec.json.decode(line)["type"] for line in _samples()}
    missing = {tag_of(t) for t in event_types()} - stored
    assert not missing, f"add a sample encoding to tests/unit/samples for {sorted(missing)}"


@pytest.mark.parametrize("line", _samples(), ids=lambda b: msgspec.json.decode(b)["type"])
def test_old_encodings_still_decode_and_round_trip(line: bytes) -> None:
    event = decode(line)
    assert tag_of(type(event)) == msgspec.json.decode(line)["type"]
    assert decode(encode(event)) == event
    # Fields the sample did not know yet take their defaults, so only stored keys compare
    # (at every depth: a parent in a decision gained its grant).
    stored = msgspec.json.decode(line)
    assert _known(msgspec.json.decode(encode(event)), stored) == stored


def _known(encoded: object, stored: object) -> object:
    """``encoded`` with only the keys ``stored`` has, in every object nested in it."""
    if isinstance(encoded, dict) and isinstance(stored, dict):
        return {k: _known(v, stored[k]) for k, v in encoded.items() if k in stored}
    if isinstance(encoded, list) and isinstance(stored, list) and len(encoded) == len(stored):
        return [_known(e, s) for e, s in zip(encoded, stored, strict=True)]
    return encoded


def test_tags_are_versioned_and_unique() -> None:
    tags = [tag_of(t) for t in event_types()]
    assert len(tags) == len(set(tags))
    assert all(t.rsplit(".", 1)[-1].startswith("v") for t in tags)


@pytest.mark.parametrize("data, reason", [
    (b"not json", "malformed"),
    (b'{"type": "peer.exploded.v1", "id": "x"}', "Invalid value 'peer.exploded.v1'"),
    (b'{"type": "host.left.v1", "cluster": "c", "host_id": "h"}', "missing required field `id`"),
    (b'{"type": "host.left.v1", "id": "x", "cluster": 3, "host_id": "h"}', "Expected `str`"),
    (b'{"id": "x"}', "Object missing required field `type`"),
])
def test_bad_bytes_raise_a_typed_error_that_says_why(data: bytes, reason: str) -> None:
    with pytest.raises(EventDecodeError, match=reason.split("`")[0]) as info:
        decode(data)
    assert reason.lower() in str(info.value).lower()


def test_an_event_no_consumer_would_accept_is_not_encoded() -> None:
    bad = PeerRegistered(id="e1", cluster="c", task_id="../../etc", peer_id="p", host_id="h",
                         url="https://origin/f")
    with pytest.raises(EventDecodeError, match=r"refusing to encode PeerRegistered: .*task_id"):
        encode(bad)


def test_events_are_frozen() -> None:
    event = HostAnnounced(id="a", cluster="c", host_id="h", hostname="n", ip="1.2.3.4",
                          upload_url="http://1.2.3.4:1")
    with pytest.raises(AttributeError):
        event.seed = True  # type: ignore[misc]  # the point: mypy refuses it too


@pytest.mark.parametrize("line", _samples(), ids=lambda b: msgspec.json.decode(b)["type"])
def test_every_event_has_one_subject_inside_one_stream(line: bytes) -> None:
    subject = subject_for(decode(line))
    owners = _owners(subject)
    assert len(owners) == 1, (subject, owners)


def _owners(subject: str) -> list[str | None]:
    """The streams whose subject filters take ``subject``."""
    return [c.name for c in stream_configs()
            if any(_matches(f, subject) for f in c.subjects or [])]


def _matches(pattern: str, subject: str) -> bool:
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def test_stream_subjects_never_overlap() -> None:
    # A cluster or job named like another family must not make JetStream refuse a stream.
    probes = ["df.job.host.x.announced", "df.host.job.h.left", "df.task.config.1.t.p.started"]
    for probe in probes:
        owners = _owners(probe)
        assert len(owners) <= 1, (probe, owners)


def test_a_task_subject_names_cluster_partition_task_host_peer_and_event() -> None:
    event = PieceFinished(id="1", cluster="default", task_id=TASK, peer_id="host-b-1", piece=3,
                          length=4, digest="sha256:x")
    parts = subject_for(event).split(".")
    assert parts == ["df", "task", "default", str(partition(TASK)), TASK, "host-b", "host-b-1",
                     "piece_finished"]
    assert 0 <= partition(TASK) < PARTITIONS
    # A peer id with nothing before its last dash (hypothesis found "-") is its own host.
    assert subject_for(msgspec.structs.replace(event, peer_id="-")).split(".")[5:7] == ["-", "-"]


@pytest.mark.parametrize("bad", ["", "a.b", "a b", "a*", "a>"])
def test_bad_tokens_are_refused(bad: str) -> None:
    with pytest.raises(SubjectError):
        task_subject("default", TASK, bad, "started")


def test_any_hostname_becomes_a_valid_token() -> None:
    assert safe_token("node-1.example.com") == "node-1_example_com"
    assert safe_token("") == "_"


def test_credentials_never_reach_an_event() -> None:
    headers = {"Authorization": "Bearer s3cr3t", "Cookie": "a=b", "Accept": "*/*",
               "X-Registry-Auth": "x", "Private-Token": "s3cr3t", "X-Auth-Token": "s3cr3t",
               "X-Goog-Api-Key": "s3cr3t", "Job-Token": "s3cr3t", "X-Hub-Secret": "s3cr3t",
               "Range": "bytes=0-"}
    event = PeerRegistered(id="1", cluster="c", task_id=TASK, peer_id="p", host_id="h",
                           url=public_url("https://me:s3cr3t@o:8443/f?x=1"),
                           headers=public_headers(headers))
    assert b"s3cr3t" not in encode(event)
    assert event.headers == {"Accept": "*/*", "Range": "bytes=0-"}
    assert event.url == "https://o:8443/f?x=1"
    assert public_url("http://o/a@b") == "http://o/a@b"  # an @ in the path is no login


def test_the_readme_catalogue_lists_every_event_type() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    missing = [tag_of(t) for t in event_types() if f"`{tag_of(t)}`" not in readme]
    assert not missing, f"README.md's event table lacks {missing}"


def test_job_progress_is_on_its_hosts_subject_and_older_logs_still_read() -> None:
    event = JobProgressed(id="jp1", job_id="j1", host_id="h1", task_id="a" * 64,
                          state="succeeded")
    data = encode(event)
    assert subject_for(event) == "df.job.j1.progressed.h1"
    assert decode_delivered("df.job.j1.progressed.h1", data) == event
    assert decode_delivered("df.job.j1.progressed", data) == event  # stored before hosts
    with pytest.raises(EventDecodeError, match="not on its own subject"):
        decode_delivered("df.job.j1.progressed.h2", data)  # another host's daemon forged it

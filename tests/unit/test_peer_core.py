"""Pure parts of the peer: task ids, piece geometry, bitmaps, digests, upload pacing."""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

import pytest

from damselfly.events.fields import MAX_PIECES
from damselfly.events.taskid import (
    MAX_PIECE,
    MIN_PIECE,
    filter_query,
    geometry_error,
    piece_count,
    piece_length_for,
    piece_range,
    task_id,
)
from damselfly.services.peer.bitmap import Bitmap
from damselfly.services.peer.digests import (
    RunningDigest,
    file_digest,
    parse_digest,
    same_digest,
)
from damselfly.services.peer.request import DownloadRequest
from damselfly.services.peer.storage import Storage
from damselfly.services.peer.upload import Pacer, mint_token


def test_task_id_is_dragonflys_concatenated_sha256() -> None:
    url = "http://o/f?a=1"
    expected = hashlib.sha256(f"{url}tagapp{1 << 20}".encode()).hexdigest()
    assert task_id(url, tag="tag", application="app", piece_length=1 << 20) == expected
    assert task_id(url) == hashlib.sha256(url.encode()).hexdigest()


def test_filtered_query_params_do_not_change_the_task_id() -> None:
    plain = task_id("http://o/f?b=2&a=1", filtered_query_params=["sig"])
    signed = task_id("http://o/f?a=1&sig=xyz&b=2", filtered_query_params=["sig"])
    assert plain == signed
    assert task_id("http://o/f?a=1&sig=xyz") != task_id("http://o/f?a=1&sig=abc")
    assert filter_query("http://o/f?x=1&y=2", ["x"]) == "http://o/f?y=2"


def test_tag_application_and_piece_length_separate_tasks() -> None:
    ids = {task_id("http://o/f"), task_id("http://o/f", tag="t"),
           task_id("http://o/f", application="a"), task_id("http://o/f", piece_length=4096)}
    assert len(ids) == 4


def test_piece_length_is_clamped_power_of_two() -> None:
    assert piece_length_for(10) == MIN_PIECE
    assert piece_length_for(500 * (5 << 20)) == 8 << 20
    assert piece_length_for(500 << 30) == MAX_PIECE
    assert piece_length_for(1 << 40, requested=1000) == 1000


def test_no_task_gets_more_pieces_than_one_message_carries_digests_for() -> None:
    # 1 TiB in 64 MiB pieces would be 16,384: the length doubles instead.
    assert piece_length_for(1 << 40) == 2 * MAX_PIECE
    for size in (1 << 40, (625 << 30) + 1, 10 << 40):
        assert piece_count(size, piece_length_for(size)) <= MAX_PIECES
        assert geometry_error(size, piece_length_for(size)) == ""
    reason = geometry_error(4 << 30, 256 << 10)
    assert reason == ("4294967296 bytes in pieces of 262144 bytes make 16384 pieces, more "
                      "than the 10000 a task may have: ask for pieces of at least 429497 "
                      "bytes, or leave the length out (16777216 for this size)")


def test_a_task_file_refuses_a_shape_of_too_many_pieces(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    request = DownloadRequest(url="http://o/f", piece_length=256 << 10)
    tf = storage.create(request.task_id(), request)
    with pytest.raises(ValueError, match="16384 pieces, more than the 10000"):
        tf.shape(4 << 30, 256 << 10)
    assert not tf.shaped


def test_piece_geometry_covers_the_file_exactly() -> None:
    length, pl = 10_000, 4096
    n = piece_count(length, pl)
    ranges = [piece_range(i, length, pl) for i in range(n)]
    assert n == 3 and ranges[-1] == (8192, 1808)
    assert sum(r[1] for r in ranges) == length


def test_bitmap_round_trips_in_bittorrent_order() -> None:
    b = Bitmap(10)
    for piece in (0, 7, 9):
        b.add(piece)
    assert b.to_bytes() == bytes([0b1000_0001, 0b0100_0000])
    again = Bitmap(10, b.to_bytes())
    assert again.held() == [0, 7, 9] and len(again) == 3 and 8 in again.missing()
    again.discard(7)
    assert 7 not in again and not again.complete()


def test_digests_of_a_file(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"hello" * 1000)
    sha = hashlib.sha256(f.read_bytes()).hexdigest()
    assert file_digest(f, "sha256") == f"sha256:{sha}"
    crc = zlib.crc32(f.read_bytes())
    assert same_digest(f"crc32:{crc:x}", file_digest(f, "crc32"))
    assert not same_digest("sha256:" + "0" * 64, file_digest(f, "sha256"))


@pytest.mark.parametrize("algorithm", ["sha256", "sha512", "crc32"])
def test_a_running_digest_taken_in_steps_is_the_files_digest(tmp_path: Path,
                                                              algorithm: str) -> None:
    f = tmp_path / "f"
    data = bytes(range(256)) * 5000 + b"tail"
    f.write_bytes(data)
    running, reached = RunningDigest(algorithm), 0
    for end in (0, 7, 1 << 16, (1 << 16) + 1, 300_000, 300_000, 12, len(data)):
        running.catch_up(f, end)  # an end already passed hashes nothing more
        reached = max(reached, end)
        assert running.hashed == reached
    assert same_digest(file_digest(f, algorithm), running.value())
    with pytest.raises(OSError, match="ends at byte"):
        running.catch_up(f, len(data) + 1)


@pytest.mark.parametrize("bad", ["sha256", "md5:abc", "sha256:", "sha256:xyz"])
def test_bad_digest_is_a_one_line_error(bad: str) -> None:
    with pytest.raises(ValueError, match="bad digest") as info:
        parse_digest(bad)
    assert "\n" not in str(info.value)


def test_pacer_spreads_uploads_to_the_rate() -> None:
    now = [100.0]
    pacer = Pacer(1000.0, clock=lambda: now[0])
    assert pacer.delay(500) == 0.0
    assert pacer.delay(500) == pytest.approx(0.5)
    assert pacer.delay(1000) == pytest.approx(1.0)
    now[0] = 200.0
    assert pacer.delay(10) == 0.0
    assert Pacer(0).delay(1 << 30) == 0.0


def test_pacer_refuses_a_wait_longer_than_allowed_and_reserves_nothing() -> None:
    now = [0.0]
    pacer = Pacer(1000.0, clock=lambda: now[0])
    assert pacer.delay(3000, max_wait=2.0) == 0.0
    assert pacer.delay(100, max_wait=2.0) is None  # would wait 3 s
    now[0] = 1.5
    assert pacer.delay(100, max_wait=2.0) == pytest.approx(1.5)


def test_tokens_differ_by_task_and_secret() -> None:
    assert mint_token("s", "t1") != mint_token("s", "t2")
    assert mint_token("s", "t1") != mint_token("other", "t1")
    assert mint_token("s", "t1") == mint_token("s", "t1")


def test_progress_bar_shows_percentage_rate_and_eta() -> None:
    import io

    from damselfly.services.peer.get import ProgressBar

    out = io.StringIO()
    bar = ProgressBar("blob.bin", out, enabled=True)
    bar.update({"state": "running", "content_length": 4 << 20, "completed_length": 1 << 20})
    bar.close()
    line = out.getvalue()
    assert line.startswith("\rblob.bin") and line.endswith("\n")
    assert " 25% " in line and "1.0 MiB/   4.0 MiB" in line and "/s ETA" in line
    quiet = io.StringIO()
    ProgressBar("x", quiet, enabled=False).update({"content_length": 1, "completed_length": 1})
    assert quiet.getvalue() == ""


def test_uploads_listen_on_loopback_unless_advertised_elsewhere() -> None:
    from damselfly.services.peer.daemon import _listen_host

    assert _listen_host("127.0.0.1") == "127.0.0.1" and _listen_host("localhost") == "127.0.0.1"
    assert _listen_host("::1") == "127.0.0.1"
    assert _listen_host("peer-1") == "0.0.0.0" and _listen_host("10.0.0.5") == "0.0.0.0"

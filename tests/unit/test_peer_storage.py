"""Task storage: resume after reopening, GC by TTL and watermarks, a full disk."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from damselfly.services.peer.request import DownloadRequest
from damselfly.services.peer.storage import DiskFullError, Storage


def _task(storage: Storage, name: str, size: int, now: list[float]) -> str:
    request = DownloadRequest(url=f"http://o/{name}")
    tf = storage.create(request.task_id(), request)
    storage.reserve(tf, size, active=())
    tf.shape(size, 100)
    for piece in range(tf.piece_count):
        tf.write(piece * 100, bytes([piece % 256]) * min(100, size - piece * 100))
        tf.mark(piece, f"sha256:{piece}")
    tf.touch()
    now[0] += 1
    return tf.task_id


def test_reopened_storage_keeps_pieces_and_bytes(tmp_path: Path) -> None:
    request = DownloadRequest(url="http://o/f", piece_length=100)
    storage = Storage(tmp_path)
    tf = storage.create(request.task_id(), request)
    tf.shape(250, 100)
    tf.write(100, b"x" * 100)
    tf.mark(1, "sha256:one")
    tf.close()

    again = Storage(tmp_path).get(request.task_id())
    assert again is not None
    assert again.bitmap.held() == [1] and again.meta.piece_digests[1] == "sha256:one"
    assert again.meta.request == request and again.completed_length() == 100
    assert again.data_path.read_bytes()[100:200] == b"x" * 100
    assert again.data_path.stat().st_size == 250


def test_a_half_created_task_is_swept(tmp_path: Path) -> None:
    (tmp_path / "tasks" / "deadbeef").mkdir(parents=True)
    Storage(tmp_path)
    assert not (tmp_path / "tasks" / "deadbeef").exists()


def test_gc_by_ttl_spares_active_tasks(tmp_path: Path) -> None:
    now = [1000.0]
    storage = Storage(tmp_path, ttl=10, clock=lambda: now[0])
    old = _task(storage, "old", 300, now)
    busy = _task(storage, "busy", 300, now)
    now[0] += 30
    fresh = _task(storage, "fresh", 300, now)
    removed = storage.collect(active={busy})
    assert [m.task_id for m in removed] == [old]
    assert {t.task_id for t in storage.tasks()} == {busy, fresh}
    assert not (tmp_path / "tasks" / old).exists()


def test_gc_evicts_least_recently_used_down_to_the_low_watermark(tmp_path: Path) -> None:
    now = [1000.0]
    storage = Storage(tmp_path, gc_high=1000, gc_low=600, clock=lambda: now[0])
    first, second, third = (_task(storage, n, 300, now) for n in ("a", "b", "c"))
    held = storage.get(first)
    assert held is not None
    held.touch()
    fourth = _task(storage, "d", 300, now)  # 1200 bytes > high: b, then c go (LRU)
    assert {t.task_id for t in storage.tasks()} == {first, fourth}
    assert storage.used() <= 600
    assert second not in {t.task_id for t in storage.tasks()}
    assert third not in {t.task_id for t in storage.tasks()}


def test_a_task_too_big_for_the_quota_fails_alone(tmp_path: Path) -> None:
    now = [1000.0]
    storage = Storage(tmp_path, quota=1000, clock=lambda: now[0])
    kept = _task(storage, "kept", 600, now)
    request = DownloadRequest(url="http://o/big")
    big = storage.create(request.task_id(), request)
    with pytest.raises(DiskFullError, match="disk full: task .* needs 500 bytes, 400 free"):
        storage.reserve(big, 500, active=())
    still = storage.get(kept)
    assert still is not None and still.complete


def test_space_a_running_task_will_still_write_is_not_free(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # A disk with 1000 bytes free, as the kernel counts it: sparse files take nothing yet.
    monkeypatch.setattr("damselfly.services.peer.storage.shutil.disk_usage",
                        lambda _: shutil._ntuple_diskusage(10_000, 9000, 1000))
    storage = Storage(tmp_path)
    first = DownloadRequest(url="http://o/running")
    running = storage.create(first.task_id(), first)
    storage.reserve(running, 800, active=())
    running.shape(800, 100)
    running.write(0, b"x" * 100)
    running.mark(0, "sha256:" + "0" * 64)
    second = DownloadRequest(url="http://o/next")
    following = storage.create(second.task_id(), second)
    with pytest.raises(DiskFullError, match="needs 400 bytes, 300 free"):  # 1000 - 700 unwritten
        storage.reserve(following, 400, active=())
    storage.reserve(following, 300, active=())

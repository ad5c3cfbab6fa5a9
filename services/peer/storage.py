"""Task storage: per task a sparse data file and a metadata file (request, shape, piece
digests, bitmap) under ``<root>/tasks/<task>/``, so a restarted daemon resumes and serves.

GC removes tasks idle past a TTL, and least recently used ones while the daemon's own
files exceed a high watermark, down to a low one. Only files under ``root`` are counted.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Final

import msgspec

from damselfly.events.taskid import geometry_error, piece_count
from damselfly.services.peer.bitmap import Bitmap
from damselfly.services.peer.request import DownloadRequest


class DiskFullError(OSError):
    """No room for a task: the disk (or the daemon's quota) cannot hold it."""

    def __str__(self) -> str:
        return str(self.strerror)


class TaskMeta(msgspec.Struct, kw_only=True):
    task_id: str
    request: DownloadRequest
    peer_id: str = ""
    content_length: int = -1
    piece_length: int = 0
    piece_digests: list[str] = msgspec.field(default_factory=list)
    bitmap: bytes = b""
    done: bool = False
    created_at: float = 0.0
    accessed_at: float = 0.0


SAVE_EVERY: Final = 1.0
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(TaskMeta)


class TaskFile:
    """One task on disk. ``write`` may run in worker threads; the rest on one thread."""

    def __init__(self, directory: Path, meta: TaskMeta, clock: Callable[[], float]) -> None:
        self.dir = directory
        self.meta = meta
        self._clock = clock
        self.bitmap = Bitmap(self.piece_count, meta.bitmap)
        self.data_path = directory / "data"
        self._fd = os.open(self.data_path, os.O_RDWR | os.O_CREAT, 0o600)
        self._lock = threading.Lock()
        self._saved_at = -SAVE_EVERY
        self._dirty = False

    @property
    def task_id(self) -> str:
        return self.meta.task_id

    @property
    def piece_count(self) -> int:
        if self.meta.content_length < 0:
            return 0
        return piece_count(self.meta.content_length, self.meta.piece_length)

    @property
    def shaped(self) -> bool:
        return self.meta.content_length >= 0

    @property
    def complete(self) -> bool:
        return self.shaped and self.bitmap.complete()

    def completed_length(self) -> int:
        if not self.shaped:
            return 0
        held = len(self.bitmap)
        last = self.piece_count - 1
        full = held - (1 if last in self.bitmap else 0)
        tail = (self.meta.content_length - last * self.meta.piece_length
                if last in self.bitmap else 0)
        return full * self.meta.piece_length + tail

    def shape(self, content_length: int, piece_length: int) -> None:
        """Fix the task's length and piece length and make the sparse file that size."""
        if self.shaped:
            if (content_length, piece_length) != (self.meta.content_length, self.meta.piece_length):
                raise ValueError(f"task {self.task_id} changed shape: {content_length}/"
                                 f"{piece_length} bytes, had {self.meta.content_length}/"
                                 f"{self.meta.piece_length}")
            return
        if reason := geometry_error(content_length, piece_length):
            raise ValueError(reason)
        self.meta.content_length = content_length
        self.meta.piece_length = piece_length
        self.bitmap = Bitmap(self.piece_count)
        self.meta.piece_digests = [""] * self.piece_count
        os.ftruncate(self._fd, content_length)
        self.save()

    def write(self, offset: int, data: memoryview | bytes) -> None:
        """Write at ``offset``. Raises ``DiskFullError`` on ENOSPC, ``OSError`` otherwise."""
        view = memoryview(data)
        try:
            while view:
                n = os.pwrite(self._fd, view, offset)
                view, offset = view[n:], offset + n
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskFullError(errno.ENOSPC, f"disk full writing {self.data_path}") from exc
            raise

    def mark(self, piece: int, digest: str) -> None:
        """Hold a verified piece. The metadata is written at most every ``SAVE_EVERY``
        seconds while pieces land (and at once for the last one): written per piece it
        cost a quarter of a child's CPU. A crash loses only marks, never bytes — the piece
        is fetched again."""
        self.bitmap.add(piece)
        self.meta.piece_digests[piece] = digest
        self._dirty = True
        if self.complete or time.monotonic() - self._saved_at >= SAVE_EVERY:
            self.save()

    def touch(self) -> None:
        self.meta.accessed_at = self._clock()
        self.save()

    def save(self) -> None:
        """Write the metadata atomically: a crash leaves the old or the new, never half."""
        with self._lock:
            self.meta.bitmap = self.bitmap.to_bytes()
            tmp = self.dir / "meta.json.tmp"
            # 0600: the request's headers may carry credentials for the origin.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(_encoder.encode(self.meta))
            os.replace(tmp, self.dir / "meta.json")
            self._saved_at, self._dirty = time.monotonic(), False

    def reader(self) -> io.FileIO:
        """The data file for reading, on a descriptor of its own (close it when done)."""
        return io.FileIO(os.dup(self._fd), "rb")

    def close(self, *, keep: bool = True) -> None:
        """Close the data file; with ``keep``, write metadata not yet written first."""
        if keep and self._dirty:
            self.save()
        os.close(self._fd)


class Storage:
    """Every task of one daemon under ``root``. ``quota`` caps the bytes its files may hold
    (0: only the disk's free space); GC thresholds are in bytes of its own files."""

    def __init__(self, root: Path, *, quota: int = 0, gc_high: int = 0, gc_low: int = 0,
                 ttl: float = 0.0, clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self._tasks_dir = root / "tasks"
        self._tasks_dir.mkdir(parents=True, exist_ok=True)
        self.quota, self.gc_high, self.gc_low, self.ttl = quota, gc_high, gc_low or gc_high, ttl
        self._clock = clock
        self._open: dict[str, TaskFile] = {}
        self.gc_runs = self.gc_removed = self.gc_freed = 0  # for the metrics
        for meta_path in sorted(self._tasks_dir.glob("*/meta.json")):
            meta = _decoder.decode(meta_path.read_bytes())
            self._open[meta.task_id] = TaskFile(meta_path.parent, meta, clock)
        for stale in self._tasks_dir.iterdir():  # a task whose metadata never landed
            if stale.is_dir() and not (stale / "meta.json").exists():
                shutil.rmtree(stale, ignore_errors=True)

    def tasks(self) -> list[TaskFile]:
        return list(self._open.values())

    def get(self, task_id: str) -> TaskFile | None:
        return self._open.get(task_id)

    def create(self, task_id: str, request: DownloadRequest) -> TaskFile:
        """The task's file, made empty if it did not exist."""
        if existing := self._open.get(task_id):
            return existing
        directory = self._tasks_dir / task_id
        directory.mkdir(exist_ok=True)
        now = self._clock()
        tf = TaskFile(directory, TaskMeta(task_id=task_id, request=request, created_at=now,
                                          accessed_at=now), self._clock)
        tf.save()
        self._open[task_id] = tf
        return tf

    def remove(self, task_id: str) -> TaskMeta | None:
        tf = self._open.pop(task_id, None)
        if tf is None:
            return None
        tf.close(keep=False)
        shutil.rmtree(tf.dir, ignore_errors=True)
        return tf.meta

    def used(self, *, besides: str = "") -> int:
        return sum(max(t.meta.content_length, 0) for t in self._open.values()
                   if t.task_id != besides)

    def reserve(self, tf: TaskFile, content_length: int, active: Collection[str]
                ) -> list[TaskMeta]:
        """Make room for ``tf`` (collecting idle tasks if needed); returns what it collected.
        Raises ``DiskFullError`` with a one-line reason when it cannot fit."""
        removed: list[TaskMeta] = []
        others = self.used(besides=tf.task_id)
        if self.gc_high and others + content_length > self.gc_high:
            removed = self.collect({*active, tf.task_id},
                                   target=max(self.gc_low - content_length, 0))
            others = self.used(besides=tf.task_id)
        # Other tasks' files are sparse until their pieces land: the disk's free space
        # still counts what they will write, so it is set aside for them.
        unwritten = sum(max(t.meta.content_length, 0) - t.completed_length()
                        for t in self._open.values() if t is not tf and not t.complete)
        free = shutil.disk_usage(self.root).free - unwritten
        if self.quota:
            free = min(free, self.quota - others)
        if content_length > free:
            raise DiskFullError(errno.ENOSPC, f"disk full: task {tf.task_id[:12]} needs "
                                              f"{content_length} bytes, {max(free, 0)} free "
                                              f"under {self.root}")
        return removed

    def collect(self, active: Collection[str], target: int | None = None) -> list[TaskMeta]:
        """Remove idle tasks past the TTL, then least recently used ones until the daemon's
        files hold at most ``target`` bytes (default: the low watermark once over the high
        one). Never touches ``active`` tasks. Returns what it removed."""
        now = self._clock()
        idle = sorted((t for t in self._open.values() if t.task_id not in active),
                      key=lambda t: t.meta.accessed_at)
        removed = [t.meta for t in idle if self.ttl and now - t.meta.accessed_at > self.ttl]
        for meta in removed:
            self.remove(meta.task_id)
        if target is None and self.gc_high and self.used() > self.gc_high:
            target = self.gc_low
        for t in idle:
            if target is None or self.used() <= target:
                break
            if t.task_id in self._open:
                self.remove(t.task_id)
                removed.append(t.meta)
        self.gc_runs += 1
        self.gc_removed += len(removed)
        self.gc_freed += sum(max(m.content_length, 0) for m in removed)
        return removed

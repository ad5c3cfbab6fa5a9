"""The registry mirror's manifest cache under ``<data-dir>/manifests/``, so a mirror whose
upstream is down still serves what it pulled: bodies by digest (``sha256/<hex>``, the
Content-Type on the first line), checked against their digest on every read, and per
upstream registry the digest each tag last pointed at (``tags/<upstream>/<name:tag>``, both
hashed). A file is written whole (temp file, fsync, rename) and the least recently used go
first once the cache outgrows its bound. Every method blocks: call them from a worker
thread."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from damselfly.services.peer.oci import is_sha256

log = logging.getLogger("damselfly.proxy")

MAX_MANIFEST: Final = 4 << 20
"""The largest manifest kept, the distribution spec's advice to registries."""
MAX_BYTES: Final = 64 << 20
_TMP: Final = ".tmp"


@dataclass(frozen=True)
class CachedManifest:
    digest: str
    content_type: str
    body: bytes


def _key(text: str) -> str:
    """A file name for any text: names and tags may hold characters a path must not."""
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class ManifestCache:
    """Manifests under ``root``, at most ``max_bytes`` of files."""

    def __init__(self, root: Path, max_bytes: int = MAX_BYTES) -> None:
        self._bodies, self._tags = root / "sha256", root / "tags"
        self._max_bytes = max_bytes
        self._bodies.mkdir(parents=True, exist_ok=True)
        self._tags.mkdir(exist_ok=True)
        for leftover in root.rglob(f"*{_TMP}"):  # a write a crash interrupted
            leftover.unlink(missing_ok=True)

    def get(self, digest: str) -> CachedManifest | None:
        """The manifest ``digest`` names; None when not kept or when its body does not match
        the digest (then it is dropped)."""
        if not is_sha256(digest):
            return None
        path = self._bodies / digest.removeprefix("sha256:")
        try:
            data = path.read_bytes()
            os.utime(path)
        except FileNotFoundError:
            return None
        content_type, _, body = data.partition(b"\n")
        if f"sha256:{hashlib.sha256(body).hexdigest()}" != digest:
            log.warning("dropped the cached manifest %s: its body does not match the digest",
                        digest)
            path.unlink(missing_ok=True)
            return None
        return CachedManifest(digest, content_type.decode(), body)

    def put(self, body: bytes, content_type: str, expected: str = "") -> str:
        """Keep a manifest; its digest, or "" (nothing kept) when that is not ``expected``.
        Raises ``OSError``."""
        digest = f"sha256:{hashlib.sha256(body).hexdigest()}"
        if expected and digest != expected:
            return ""
        self._write(self._bodies / digest.removeprefix("sha256:"),
                    content_type.encode() + b"\n" + body)
        return digest

    def set_tag(self, upstream: str, name: str, tag: str, digest: str) -> None:
        """Remember that ``tag`` of ``name`` at ``upstream`` pointed at ``digest``.
        Raises ``OSError``."""
        self._write(self._tags / _key(upstream) / _key(f"{name}:{tag}"), digest.encode())

    def tagged(self, upstream: str, name: str, tag: str) -> CachedManifest | None:
        """The manifest ``tag`` of ``name`` at ``upstream`` last pointed at, if still kept."""
        path = self._tags / _key(upstream) / _key(f"{name}:{tag}")
        try:
            digest = path.read_text()
            os.utime(path)
        except FileNotFoundError:
            return None
        return self.get(digest)

    def knows(self, upstream: str) -> bool:
        """Whether any tag of ``upstream`` is remembered."""
        try:
            return any((self._tags / _key(upstream)).iterdir())
        except FileNotFoundError:
            return False

    def _write(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=_TMP)
        try:
            with open(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        self._trim()

    def _trim(self) -> None:
        """Drop the least recently used files until the rest fit in ``max_bytes``."""
        files = []
        for path in (*self._bodies.iterdir(), *self._tags.glob("*/*")):
            if path.suffix == _TMP:  # another thread's write, not yet in place
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:  # dropped by another thread meanwhile
                continue
            files.append((stat.st_mtime, stat.st_size, path))
        used = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if used <= self._max_bytes:
                break
            path.unlink(missing_ok=True)
            used -= size

"""Piece digests and whole-file digests (``sha256:…``, ``sha512:…``, ``crc32:…``)."""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path
from typing import Final

ALGORITHMS: Final = ("sha256", "sha512", "crc32")
CHUNK: Final = 1 << 20


def parse_digest(value: str) -> tuple[str, str]:
    """``"sha256:ab…"`` → ``("sha256", "ab…")``. Raises ``ValueError`` with a one-line reason."""
    algorithm, sep, hexdigest = value.partition(":")
    if not sep or algorithm not in ALGORITHMS or not hexdigest:
        raise ValueError(f"bad digest {value!r}: want one of "
                         f"{', '.join(a + ':<hex>' for a in ALGORITHMS)}")
    try:
        int(hexdigest, 16)
    except ValueError:
        raise ValueError(f"bad digest {value!r}: not hexadecimal") from None
    return algorithm, hexdigest.lower()


def file_digest(path: Path, algorithm: str) -> str:
    """The digest of a file in ``algorithm:hex`` form, read in chunks (blocking)."""
    with open(path, "rb") as f:
        if algorithm == "crc32":
            crc = 0
            while chunk := f.read(CHUNK):
                crc = zlib.crc32(chunk, crc)
            return f"crc32:{crc:08x}"
        return f"{algorithm}:{hashlib.file_digest(f, algorithm).hexdigest()}"


def same_digest(expected: str, actual: str) -> bool:
    algorithm, want = parse_digest(expected)
    _, got = parse_digest(actual)
    if algorithm == "crc32":
        return int(want, 16) == int(got, 16)
    return want == got

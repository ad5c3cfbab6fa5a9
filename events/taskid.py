"""Task ids and piece geometry, computed the way Dragonfly does. Pure: no I/O."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from damselfly.events.fields import MAX_PIECES

MIN_PIECE: Final = 256 << 10
"""Dragonfly's floor is 4 MiB; a 64 MiB file then has 16 pieces and for the first piece-times
no child has anything to give another (issue 16). 256 KiB gives it 256, each one hop of
31 ms on an 8 MiB/s link; a piece reaches the last of 10 children in half the time it took
with 512 KiB (docs/protocol.md, "Piece length")."""
MAX_PIECE: Final = 64 << 20
TARGET_PIECES: Final = 500


def filter_query(url: str, filtered: Iterable[str]) -> str:
    """The URL without the filtered query parameters (re-encoded sorted, as Go's
    ``url.Values.Encode`` does); unchanged when nothing is filtered."""
    names = set(filtered)
    if not names:
        return url
    parts = urlsplit(url)
    kept = sorted((k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                  if k not in names)
    return urlunsplit(parts._replace(query=urlencode(kept)))


def task_id(url: str, *, tag: str = "", application: str = "", piece_length: int = 0,
            filtered_query_params: Iterable[str] = ()) -> str:
    """Dragonfly's ``TaskIDV2`` without the digest: sha256 of the filtered URL, tag,
    application and (when one was asked for) the piece length, concatenated."""
    params = [filter_query(url, filtered_query_params), tag, application]
    if piece_length:
        params.append(str(piece_length))
    h = hashlib.sha256()
    for p in params:
        h.update(p.encode())
    return h.hexdigest()


def piece_length_for(content_length: int, requested: int = 0) -> int:
    """The requested length, else the next power of two of length/500 clamped to
    256 KiB–64 MiB, doubled past 64 MiB while the task would have more than ``MAX_PIECES``
    pieces (files over 625 GiB)."""
    if requested > 0:
        return requested
    wanted = max(1, content_length // TARGET_PIECES)
    length = min(max(1 << (wanted - 1).bit_length(), MIN_PIECE), MAX_PIECE)
    while piece_count(content_length, length) > MAX_PIECES:
        length *= 2
    return length


def geometry_error(content_length: int, piece_length: int) -> str:
    """Why a task of this size cannot have pieces of this length (too many), or ""."""
    count = piece_count(content_length, piece_length)
    if count <= MAX_PIECES:
        return ""
    return (f"{content_length} bytes in pieces of {piece_length} bytes make {count} pieces, "
            f"more than the {MAX_PIECES} a task may have: ask for pieces of at least "
            f"{-(-content_length // MAX_PIECES)} bytes, or leave the length out "
            f"({piece_length_for(content_length)} for this size)")


def piece_count(content_length: int, piece_length: int) -> int:
    return -(-content_length // piece_length)


def piece_range(piece: int, content_length: int, piece_length: int) -> tuple[int, int]:
    """``(offset, length)`` of one piece; the last one may be short."""
    offset = piece * piece_length
    return offset, min(piece_length, content_length - offset)

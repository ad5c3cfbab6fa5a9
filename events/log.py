"""The exported event log (``damselfly events dump``): one JSON record a line, in order."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Final

import msgspec

from damselfly.events.codec import AnyEvent, EventDecodeError


class LogRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One stored event with where and when the stream stored it."""

    stream: str
    seq: int
    subject: str
    time: float
    event: AnyEvent


_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(LogRecord)


def encode_record(record: LogRecord) -> bytes:
    return _encoder.encode(record)


def read_log(path: Path) -> Iterator[LogRecord]:
    """Records of a dumped log in file order. Raises ``EventDecodeError`` naming the line."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield _decoder.decode(line)
            except msgspec.DecodeError as exc:
                raise EventDecodeError(f"{path}:{number}: {exc}") from exc

"""A piece bitmap: bit ``i`` set when piece ``i`` is held; piece 0 is the high bit of byte 0
(BitTorrent's order). Pure."""

from __future__ import annotations


class Bitmap:
    def __init__(self, count: int, data: bytes = b"") -> None:
        self.count = count
        self._bits = bytearray((count + 7) // 8)
        self._bits[: len(data)] = data[: len(self._bits)]

    def __contains__(self, piece: int) -> bool:
        return 0 <= piece < self.count and bool(self._bits[piece >> 3] & (0x80 >> (piece & 7)))

    def add(self, piece: int) -> None:
        self._bits[piece >> 3] |= 0x80 >> (piece & 7)

    def discard(self, piece: int) -> None:
        self._bits[piece >> 3] &= ~(0x80 >> (piece & 7)) & 0xFF

    def held(self) -> list[int]:
        return [i for i in range(self.count) if i in self]

    def missing(self) -> list[int]:
        return [i for i in range(self.count) if i not in self]

    def __len__(self) -> int:
        return sum(b.bit_count() for b in self._bits)

    def complete(self) -> bool:
        return len(self) == self.count

    def to_bytes(self) -> bytes:
        return bytes(self._bits)

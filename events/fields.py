"""The shapes an event's fields may take, checked by msgspec while it decodes.

Whatever reaches a file path, a subject, a SQL statement or a loop bound is constrained here,
so a forged or corrupt event is an undecodable one: it goes to the dead-letter subject with
msgspec's one-line reason and no consumer ever acts on it (issue 12: a task id that was a
path made a seed write outside its data dir, a non-hex one crash-looped a scheduler
partition on every replay). Constructing an event in code checks nothing but the
consistency rules in ``__post_init__``; the decoder checks everything.
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

MAX_PIECES: Final = 10_000
"""The most pieces a task may have: its digests (about 74 bytes each) go in one message
(``TaskMetadataReported``, ``ParentsAssigned``), which must fit the broker's default 1 MiB
payload with room for the parents. A task with more is not believed; a download asked for
more gets a one-line error (``taskid.geometry_error``)."""
MAX_CONTENT: Final = 1 << 50
"""1 PiB: larger than any task, smaller than anything that overflows a DuckDB BIGINT sum."""
MAX_PIECE_LENGTH: Final = 1 << 30
"""Dragonfly's largest piece length (1 GiB)."""
MAX_LIST: Final = 10_000
"""Ids, URLs or parents in one event's list."""
MAX_BATCH: Final = 1024
"""Pieces in one ``PiecesFinished`` (about 64 KiB: far below NATS' 1 MiB payload)."""

TaskId = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
"""A task id: sha256 in lower-case hex (``taskid.task_id``)."""
TOKEN_PATTERN: Final = r"^[A-Za-z0-9_-]{1,128}$"
Token = Annotated[str, msgspec.Meta(pattern=TOKEN_PATTERN)]
"""An id that is a subject token and a file or table key: cluster, host, peer, job, user,
token and tenant ids (no ``.``, ``*``, ``>``, ``/`` or space)."""
OptToken = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{0,128}$")]
"""A ``Token``, or empty where the field is optional (a piece's parent: empty is the origin)."""
EventId = Annotated[str, msgspec.Meta(pattern=r"^[!-~]{1,128}$")]
"""An event id, also the ``Nats-Msg-Id`` header: printable ASCII without spaces."""
Digest = Annotated[str, msgspec.Meta(pattern=r"^([a-z0-9]{2,16}:[0-9a-f]{8,128})?$")]
"""``algorithm:hex`` (``sha256:…``), or empty while unknown."""
Url = Annotated[str, msgspec.Meta(max_length=8192)]
Text = Annotated[str, msgspec.Meta(max_length=4096)]
"""A reason, a name or a label: shown, never used as a key."""
Headers = Annotated[dict[str, str], msgspec.Meta(max_length=256)]
Piece = Annotated[int, msgspec.Meta(ge=0, lt=MAX_PIECES)]
PieceCount = Annotated[int, msgspec.Meta(ge=0, le=MAX_PIECES)]
PieceLength = Annotated[int, msgspec.Meta(ge=0, le=MAX_PIECE_LENGTH)]
"""0: not chosen (yet)."""
Length = Annotated[int, msgspec.Meta(ge=0, le=MAX_CONTENT)]
ContentLength = Annotated[int, msgspec.Meta(ge=-1, le=MAX_CONTENT)]
"""-1: not known (yet)."""
Priority = Annotated[int, msgspec.Meta(ge=0, le=6)]
"""Dragonfly's LEVEL0 … LEVEL6."""
Seconds = Annotated[float, msgspec.Meta(ge=0, le=1e11)]
"""A unix time or a duration in seconds."""
Limit = Annotated[int, msgspec.Meta(ge=0, le=100_000)]
Millis = Annotated[float, msgspec.Meta(ge=0, le=1e12)]
Bitmap = Annotated[bytes, msgspec.Meta(max_length=MAX_PIECES // 8)]
Sealed = Annotated[str, msgspec.Meta(max_length=65536)]
Result = Annotated[dict[str, str], msgspec.Meta(max_length=MAX_LIST)]
ParentLimit = Annotated[int, msgspec.Meta(ge=1, le=20)]
"""Dragonfly's candidate parent limit, 1–20."""
FilterLimit = Annotated[int, msgspec.Meta(ge=1, le=1000)]
Weights = Annotated[dict[str, Annotated[float, msgspec.Meta(ge=0, le=100)]],
                    msgspec.Meta(max_length=64)]
Tokens = Annotated[list[Token], msgspec.Meta(max_length=MAX_LIST)]
TaskIds = Annotated[list[TaskId], msgspec.Meta(max_length=MAX_LIST)]
Urls = Annotated[list[Url], msgspec.Meta(max_length=MAX_LIST)]
Texts = Annotated[list[Text], msgspec.Meta(max_length=MAX_LIST)]
Digests = Annotated[list[Digest], msgspec.Meta(max_length=MAX_PIECES)]


def check_shape(content_length: int, piece_length: int, piece_count: int,
                digests: int) -> None:
    """Raise ``ValueError`` unless a task's geometry is consistent: ``piece_count`` pieces
    of ``piece_length`` cover ``content_length`` exactly, with no more digests than pieces.
    An unknown length (-1) or piece length (0) has no pieces yet."""
    if content_length < 0 or piece_length == 0:
        if piece_count or digests:
            raise ValueError(f"{piece_count} pieces of a task whose shape is not known")
        return
    wanted = -(-content_length // piece_length)
    if piece_count != wanted:
        raise ValueError(f"piece_count {piece_count} does not fit {content_length} bytes in "
                         f"pieces of {piece_length} (that is {wanted})")
    if digests > piece_count:
        raise ValueError(f"{digests} digests for {piece_count} pieces")

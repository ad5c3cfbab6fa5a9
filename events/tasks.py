"""Task events: one peer's download of one task, from registration to leaving.

Subjects: ``df.task.<cluster>.<partition>.<task>.<peer>.<name>``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Annotated, TypeVar

import msgspec

from damselfly.events.base import Event
from damselfly.events.fields import (
    MAX_BATCH,
    ContentLength,
    Digest,
    Digests,
    Headers,
    Length,
    Millis,
    OptToken,
    Piece,
    PieceCount,
    PieceLength,
    Priority,
    TaskId,
    Text,
    Texts,
    Token,
    Tokens,
    Url,
    check_shape,
)

E = TypeVar("E")


class PeerRegistered(Event, frozen=True, kw_only=True, tag="peer.registered.v1"):
    """A peer asked to download a task and wants parents (or an order to go to the origin).

    ``headers`` never holds credentials: the publisher strips them (see ``events.secrets``).
    """

    cluster: Token
    task_id: TaskId
    peer_id: Token
    host_id: Token
    url: Url
    tag: Text = ""
    application: Text = ""
    priority: Priority = 3
    piece_length: PieceLength = 0
    headers: Headers = msgspec.field(default_factory=dict)
    filtered_query_params: Texts = msgspec.field(default_factory=list)
    disable_back_to_source: bool = False


class PeerStarted(Event, frozen=True, kw_only=True, tag="peer.started.v1"):
    """A peer began fetching pieces from the parents it was given."""

    cluster: Token
    task_id: TaskId
    peer_id: Token


class BackToSourceStarted(Event, frozen=True, kw_only=True, tag="peer.back_to_source_started.v1"):
    """A peer began fetching from the origin instead of from peers."""

    cluster: Token
    task_id: TaskId
    peer_id: Token
    reason: str = ""


class TaskMetadataReported(Event, frozen=True, kw_only=True, tag="task.metadata_reported.v1"):
    """The peer that fetched from the origin reports the task's shape and piece digests.

    Only a peer that fetched from the origin may report this; its digests are the authority.
    ``piece_digests`` may be empty while the download is still running.
    """

    cluster: Token
    task_id: TaskId
    peer_id: Token
    content_length: ContentLength
    piece_length: PieceLength
    piece_count: PieceCount
    piece_digests: Digests = msgspec.field(default_factory=list)
    digest: Digest = ""

    def __post_init__(self) -> None:
        check_shape(self.content_length, self.piece_length, self.piece_count,
                    len(self.piece_digests))


class PieceFinished(Event, frozen=True, kw_only=True, tag="peer.piece_finished.v1"):
    """A peer holds a verified piece. ``parent_id`` is empty when it came from the origin."""

    cluster: Token
    task_id: TaskId
    peer_id: Token
    piece: Piece
    length: PieceLength
    digest: Digest
    parent_id: OptToken = ""
    cost_ms: Millis = 0.0


class FinishedPiece(msgspec.Struct, frozen=True, array_like=True):
    """One piece of a ``PiecesFinished``, as a JSON array: ``[piece, length, digest,
    parent_id, cost_ms]`` (what a ``PieceFinished`` says, without the envelope). A piece
    from a parent carries no digest: only a source peer's digests count, and the child
    checked the bytes against them."""

    piece: Piece
    length: PieceLength
    digest: Digest = ""
    parent_id: OptToken = ""
    cost_ms: Millis = 0.0


class PiecesFinished(Event, frozen=True, kw_only=True, tag="peer.pieces_finished.v1"):
    """A peer holds these verified pieces: its piece reports of the last moment, batched
    (a 100-byte array per piece instead of a 600-byte event, and one delivery per
    follower for many pieces). Folded exactly as the ``PieceFinished`` events of ``singles``."""

    cluster: Token
    task_id: TaskId
    peer_id: Token
    pieces: Annotated[list[FinishedPiece], msgspec.Meta(max_length=MAX_BATCH)]

    def singles(self) -> list[PieceFinished]:
        """The same facts as one ``PieceFinished`` per piece (ids ``<id>-<i>``)."""
        return [PieceFinished(id=f"{self.id}-{i}", at=self.at, cluster=self.cluster,
                              task_id=self.task_id, peer_id=self.peer_id, piece=p.piece,
                              length=p.length, digest=p.digest, parent_id=p.parent_id,
                              cost_ms=p.cost_ms) for i, p in enumerate(self.pieces)]


def singles(events: Iterable[E]) -> Iterator[E | PieceFinished]:
    """``events`` with every ``PiecesFinished`` unfolded into its ``PieceFinished`` events,
    for a consumer that folds piece by piece."""
    for e in events:
        if isinstance(e, PiecesFinished):
            yield from e.singles()
        else:
            yield e


class PieceFailed(Event, frozen=True, kw_only=True, tag="peer.piece_failed.v1"):
    """A piece download from a parent (or the origin, ``parent_id`` empty) failed."""

    cluster: Token
    task_id: TaskId
    peer_id: Token
    piece: Piece
    parent_id: OptToken = ""
    reason: str = ""
    corrupt: bool = False


class PeerSucceeded(Event, frozen=True, kw_only=True, tag="peer.succeeded.v1"):
    """A peer holds the whole task, verified."""

    cluster: Token
    task_id: TaskId
    peer_id: Token
    content_length: ContentLength
    piece_count: PieceCount
    bytes_from_origin: Length = 0
    bytes_from_peers: Length = 0
    cost_ms: Millis = 0.0


class PeerFailed(Event, frozen=True, kw_only=True, tag="peer.failed.v1"):
    """A peer gave up on a task; ``reason`` says why in one line."""

    cluster: Token
    task_id: TaskId
    peer_id: Token
    reason: str


class PeerLeft(Event, frozen=True, kw_only=True, tag="peer.left.v1"):
    """A peer no longer serves a task (deleted, garbage-collected or daemon stopped)."""

    cluster: Token
    task_id: TaskId
    peer_id: Token
    reason: str = ""


class RescheduleRequested(Event, frozen=True, kw_only=True, tag="peer.reschedule_requested.v1"):
    """A peer's parents stalled or failed; it asks for others, never those in ``blocklist``."""

    cluster: Token
    task_id: TaskId
    peer_id: Token
    reason: str = ""
    blocklist: Tokens = msgspec.field(default_factory=list)


TaskEvent = (
    PeerRegistered
    | PeerStarted
    | BackToSourceStarted
    | TaskMetadataReported
    | PieceFinished
    | PiecesFinished
    | PieceFailed
    | PeerSucceeded
    | PeerFailed
    | PeerLeft
    | RescheduleRequested
)

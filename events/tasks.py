"""Task events: one peer's download of one task, from registration to leaving.

Subjects: ``df.task.<cluster>.<partition>.<task>.<peer>.<name>``.
"""

from __future__ import annotations

import msgspec

from damselfly.events.base import Event


class PeerRegistered(Event, frozen=True, kw_only=True, tag="peer.registered.v1"):
    """A peer asked to download a task and wants parents (or an order to go to the origin).

    ``headers`` never holds credentials: the publisher strips them (see ``events.secrets``).
    """

    cluster: str
    task_id: str
    peer_id: str
    host_id: str
    url: str
    tag: str = ""
    application: str = ""
    priority: int = 3
    piece_length: int = 0
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    filtered_query_params: list[str] = msgspec.field(default_factory=list)
    disable_back_to_source: bool = False


class PeerStarted(Event, frozen=True, kw_only=True, tag="peer.started.v1"):
    """A peer began fetching pieces from the parents it was given."""

    cluster: str
    task_id: str
    peer_id: str


class BackToSourceStarted(Event, frozen=True, kw_only=True, tag="peer.back_to_source_started.v1"):
    """A peer began fetching from the origin instead of from peers."""

    cluster: str
    task_id: str
    peer_id: str
    reason: str = ""


class TaskMetadataReported(Event, frozen=True, kw_only=True, tag="task.metadata_reported.v1"):
    """The peer that fetched from the origin reports the task's shape and piece digests.

    Only a peer that fetched from the origin may report this; its digests are the authority.
    ``piece_digests`` may be empty while the download is still running.
    """

    cluster: str
    task_id: str
    peer_id: str
    content_length: int
    piece_length: int
    piece_count: int
    piece_digests: list[str] = msgspec.field(default_factory=list)
    digest: str = ""


class PieceFinished(Event, frozen=True, kw_only=True, tag="peer.piece_finished.v1"):
    """A peer holds a verified piece. ``parent_id`` is empty when it came from the origin."""

    cluster: str
    task_id: str
    peer_id: str
    piece: int
    length: int
    digest: str
    parent_id: str = ""
    cost_ms: float = 0.0


class PieceFailed(Event, frozen=True, kw_only=True, tag="peer.piece_failed.v1"):
    """A piece download from a parent (or the origin, ``parent_id`` empty) failed."""

    cluster: str
    task_id: str
    peer_id: str
    piece: int
    parent_id: str = ""
    reason: str = ""
    corrupt: bool = False


class PeerSucceeded(Event, frozen=True, kw_only=True, tag="peer.succeeded.v1"):
    """A peer holds the whole task, verified."""

    cluster: str
    task_id: str
    peer_id: str
    content_length: int
    piece_count: int
    bytes_from_origin: int = 0
    bytes_from_peers: int = 0
    cost_ms: float = 0.0


class PeerFailed(Event, frozen=True, kw_only=True, tag="peer.failed.v1"):
    """A peer gave up on a task; ``reason`` says why in one line."""

    cluster: str
    task_id: str
    peer_id: str
    reason: str


class PeerLeft(Event, frozen=True, kw_only=True, tag="peer.left.v1"):
    """A peer no longer serves a task (deleted, garbage-collected or daemon stopped)."""

    cluster: str
    task_id: str
    peer_id: str
    reason: str = ""


class RescheduleRequested(Event, frozen=True, kw_only=True, tag="peer.reschedule_requested.v1"):
    """A peer's parents stalled or failed; it asks for others, never those in ``blocklist``."""

    cluster: str
    task_id: str
    peer_id: str
    reason: str = ""
    blocklist: list[str] = msgspec.field(default_factory=list)


TaskEvent = (
    PeerRegistered
    | PeerStarted
    | BackToSourceStarted
    | TaskMetadataReported
    | PieceFinished
    | PieceFailed
    | PeerSucceeded
    | PeerFailed
    | PeerLeft
    | RescheduleRequested
)

"""The base every event shares: a unique id and the time the shell stamped on it."""

from __future__ import annotations

import msgspec

from damselfly.events.fields import EventId, Seconds


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """A fact that happened. Subclasses set a versioned tag such as ``"host.announced.v1"``.

    ``id`` is unique per event and doubles as the ``Nats-Msg-Id`` header, so a retried
    publish is stored once. ``at`` is unix seconds, stamped by a shell, never by a core.
    """

    id: EventId
    at: Seconds = 0.0


def tag_of(kind: type[Event]) -> str:
    """An event type's versioned tag (``task.piece_finished.v1``)."""
    tag = kind.__struct_config__.tag
    assert isinstance(tag, str)
    return tag

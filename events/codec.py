"""Pure encoding and decoding of every event type. JSON, so a dumped log is readable."""

from __future__ import annotations

from typing import Final, get_args

import msgspec

from damselfly.events.admin import AdminEvent
from damselfly.events.base import Event
from damselfly.events.config import ConfigEvent
from damselfly.events.hosts import HostEvent
from damselfly.events.jobs import JobEvent, JobProgressed
from damselfly.events.sched import SchedEvent
from damselfly.events.subjects import SubjectError, job_subject, subject_for
from damselfly.events.tasks import TaskEvent

AnyEvent = HostEvent | TaskEvent | SchedEvent | JobEvent | ConfigEvent | AdminEvent


class EventDecodeError(ValueError):
    """The bytes are not a known, valid event (bad JSON, unknown tag, wrong field types)."""


_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(AnyEvent)


def encode(event: Event) -> bytes:
    """The event's bytes. Raises ``EventDecodeError`` for an event that every consumer would
    refuse (a field out of shape, ``events.fields``), so that it fails where it is made, with
    the reason, instead of landing in the dead-letter subject."""
    data = _encoder.encode(event)
    try:
        _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise EventDecodeError(f"refusing to encode {type(event).__name__}: {exc}") from exc
    return data


def decode(data: bytes) -> AnyEvent:
    """Decode one event; raises ``EventDecodeError`` with msgspec's one-line reason."""
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise EventDecodeError(str(exc)) from exc


def decode_delivered(subject: str, data: bytes) -> AnyEvent:
    """Decode an event that arrived on ``subject``, which must be its own subject
    (``subjects.subject_for``): the broker lets a daemon publish only under its host's
    subjects, so an event there that names another host's peer is forged. Raises
    ``EventDecodeError`` for both."""
    event = decode(data)
    try:
        own = subject_for(event)
    except SubjectError as exc:
        raise EventDecodeError(str(exc)) from exc
    if own != subject and not _stored_before_its_subject_changed(event, subject):
        raise EventDecodeError(f"published on {subject}, not on its own subject {own}")
    return event


def _stored_before_its_subject_changed(event: AnyEvent, subject: str) -> bool:
    """A ``JobProgressed`` stored before progress had per-host subjects, on the job's own
    (only the manager and admin roles may publish there now, so it is not a daemon's
    forgery)."""
    return isinstance(event, JobProgressed) and subject == job_subject(event.job_id,
                                                                       "progressed")


def to_builtins(event: Event) -> dict[str, object]:
    """The event as plain JSON-able values (bytes become base64), for dumps and tables."""
    value = msgspec.to_builtins(event)
    assert isinstance(value, dict)
    return value


def event_types() -> list[type[Event]]:
    """Every concrete event type, in catalogue order."""
    return list(get_args(AnyEvent))

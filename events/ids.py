"""Identifiers: random ones for new facts, derived ones for decisions."""

from __future__ import annotations

import hashlib
import uuid


def new_id() -> str:
    return uuid.uuid4().hex


def derived_id(trigger_id: str, *parts: str) -> str:
    """A stable id for an event caused by ``trigger_id``: replaying the trigger yields it again."""
    return hashlib.sha256("|".join((trigger_id, *parts)).encode()).hexdigest()[:32]

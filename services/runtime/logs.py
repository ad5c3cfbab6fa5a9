"""How every ``damselfly`` command logs: ``text`` (one readable line per record) or ``json``
(one JSON object per line, for a log pipeline), to stderr.

A JSON line has ``time``, ``level``, ``logger`` and ``message``, plus whatever ids the call
passed in ``extra`` (``task_id``, ``peer_id``, ``host_id``, ``partition``, ``stream``, …).
The format comes from ``--log-format`` or, for the services a launcher starts, the
``DAMSELFLY_LOG_FORMAT`` environment variable.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Final

FORMATS: Final = ("text", "json")
ENV: Final = "DAMSELFLY_LOG_FORMAT"
TEXT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def default_format() -> str:
    chosen = os.environ.get(ENV, "text")
    return chosen if chosen in FORMATS else "text"


def configure(fmt: str, *, verbose: bool = False) -> None:
    """Log at INFO (DEBUG when ``verbose``) in ``fmt``; the processes this one starts
    inherit the format."""
    os.environ[ENV] = fmt
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter  # not loaded by `get` in text mode

        handler.setFormatter(JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"}))
    else:
        handler.setFormatter(logging.Formatter(TEXT))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler],
                        force=True)

"""Log lines as text or as one JSON object each, with the ids a call passes as fields."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from damselfly.services.cli.main import build_parser
from damselfly.services.runtime import logs


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(logs.ENV, raising=False)
    yield
    logs.configure("text")


def test_json_lines_carry_the_ids_as_fields(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("json")
    logging.getLogger("damselfly.peer").warning(
        "task %s failed: %s", "ab12", "origin answered 404",
        extra={"task_id": "ab12" * 16, "peer_id": "h1-p1", "host_id": "h1"})
    line = json.loads(capsys.readouterr().err.strip())
    assert line["message"] == "task ab12 failed: origin answered 404"
    assert (line["level"], line["logger"]) == ("WARNING", "damselfly.peer")
    assert (line["task_id"], line["peer_id"], line["host_id"]) == ("ab12" * 16, "h1-p1", "h1")
    assert line["time"]


def test_text_lines_stay_readable(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("text")
    logging.getLogger("damselfly.peer").info("ready", extra={"host_id": "h1"})
    assert capsys.readouterr().err.rstrip().endswith("INFO damselfly.peer: ready")


def test_the_flag_defaults_to_the_launchers_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    tail = ["events", "tail", "--nats", "nats://127.0.0.1:4222"]
    assert build_parser(tail).parse_args(tail).log_format == "text"
    monkeypatch.setenv(logs.ENV, "json")
    assert build_parser(tail).parse_args(tail).log_format == "json"
    argv = ["--log-format", "text", *tail]
    assert build_parser(argv).parse_args(argv).log_format == "text"

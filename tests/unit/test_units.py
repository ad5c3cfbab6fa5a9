"""Durations and sizes as dfget takes them, and the one-line errors for anything else."""

from __future__ import annotations

import pytest

from damselfly.services.cli.main import build_parser
from damselfly.services.runtime.units import duration, size


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90.0), ("2.5", 2.5), ("30s", 30.0), ("2h", 7200.0), ("1h30m", 5400.0),
    ("500ms", 0.5), ("1d", 86400.0), ("0", 0.0)])
def test_durations_in_seconds_or_gos_form(text: str, seconds: float) -> None:
    assert duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "2x", "h", "1h 30m", "-5", "30s2"])
def test_other_durations_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        duration(bad)


@pytest.mark.parametrize(("text", "nbytes"), [
    ("4194304", 4 << 20), ("4mib", 4 << 20), ("4MiB", 4 << 20), ("16KiB", 16 << 10),
    ("4mb", 4_000_000), ("1 gib", 1 << 30), ("512b", 512)])
def test_sizes_in_bytes_or_with_a_unit(text: str, nbytes: int) -> None:
    assert size(text) == nbytes


@pytest.mark.parametrize("bad", ["", "4xb", "mib", "-4mib", "4 m i b"])
def test_other_sizes_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        size(bad)


def test_get_takes_dfget_durations_and_sizes() -> None:
    args = build_parser().parse_args(["get", "http://o/f", "-O", "f", "--timeout", "2h",
                                      "--piece-length", "4mib"])
    assert (args.timeout, args.piece_length) == (7200.0, 4 << 20)


def test_a_bad_duration_is_one_line_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["get", "http://o/f", "-O", "f", "--timeout", "2x"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.endswith("argument --timeout: invalid duration value: '2x'")

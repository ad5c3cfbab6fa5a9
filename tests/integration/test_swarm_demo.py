"""``damselfly demo`` (what ``make demo`` runs) as a user sees it: a table per peer and the
origin's bytes against the file's size."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from damselfly.services.runtime.procs import DAMSELFLY

pytestmark = pytest.mark.slow


def test_demo_prints_a_row_per_peer_and_the_origin_ratio(tmp_path: Path) -> None:
    result = subprocess.run(
        [*DAMSELFLY, "demo", "--data-dir", str(tmp_path / "demo"),
         "--peers", "3", "--size-mib", "4"], capture_output=True, text=True, timeout=240,
        check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.strip()}
    for name in ("peer-1", "peer-2", "peer-3"):
        assert rows[name][1] == "succeeded" and rows[name][3:5] == ["0.0", "MiB"]
    assert rows["seed-peer"][1:3] == ["succeeded", "4.0"]
    ratio = re.search(r"origin served .* file: ([0-9.]+)x its size", result.stdout)
    assert ratio is not None and float(ratio[1]) <= 1.1
    assert "3 peers all hold identical bytes" in result.stdout

"""Child processes that never outlive their parent, and endpoints they report when ready."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Final

_PR_SET_PDEATHSIG = 1
DAMSELFLY: Final = (sys.executable, "-m", "damselfly.services.cli")
"""The ``damselfly`` command as this interpreter runs it (no console script needed)."""


def _die_with_parent() -> None:
    # If the launcher is killed -9, the kernel still sends its children SIGTERM.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(argv: list[str], log: IO[bytes] | None = None, env: dict[str, str] | None = None
          ) -> subprocess.Popen[bytes]:
    """Start a child that receives SIGTERM when this process dies. Raises ``OSError``."""
    return subprocess.Popen(argv, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,  # noqa: PLW1509
                            env={**os.environ, **(env or {})})


def stop(procs: list[subprocess.Popen[bytes]], grace: float = 10.0) -> None:
    """SIGTERM every child, wait up to ``grace`` seconds in all, then SIGKILL the rest."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def write_ready(path: Path, endpoints: dict[str, object]) -> None:
    """Write a service's endpoints atomically, so a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(endpoints, indent=2))
    os.replace(tmp, path)


def wait_ready(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30.0
               ) -> dict[str, object]:
    """Wait for a child's ready file. Raises ``RuntimeError`` if it exits or times out first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            data = json.loads(path.read_text())
            assert isinstance(data, dict)
            return data
        if proc.poll() is not None:
            program = proc.args[0] if isinstance(proc.args, list) else proc.args
            raise RuntimeError(f"{program!s} exited with {proc.returncode} before it was ready")
        time.sleep(0.05)
    raise RuntimeError(f"no ready file {path} after {timeout:.0f}s")

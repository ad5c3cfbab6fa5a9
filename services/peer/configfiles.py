"""Writing a container runtime's configuration files (``damselfly init``): each atomically,
keeping a different previous one beside it as ``<name>.bak``."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ConfigFile:
    path: Path
    text: str


def apply(files: list[ConfigFile]) -> list[str]:
    """Write each file; returns one line per file saying what changed. Raises ``OSError``."""
    changes = []
    for f in files:
        old = f.path.read_text() if f.path.exists() else None
        if old == f.text:
            changes.append(f"unchanged {f.path}")
            continue
        f.path.parent.mkdir(parents=True, exist_ok=True)
        if old is not None:
            f.path.with_name(f"{f.path.name}.bak").write_text(old)
        tmp = f.path.with_name(f".{f.path.name}.{secrets.token_hex(4)}")
        tmp.write_text(f.text)
        os.replace(tmp, f.path)
        changes.append(f"created {f.path}" if old is None else
                       f"updated {f.path} (previous kept as {f.path.name}.bak)")
    return changes

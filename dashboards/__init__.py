"""SQL dashboard panels: one ``.sql`` file each, with a header naming its title and chart.

A panel file starts with comment lines such as::

    -- title: Back-to-source ratio over time
    -- chart: line
    -- order: 10

``chart`` is ``line`` or ``bar`` (the first column is the x axis or label, every other
column a numeric series) or ``table``; panels are listed by ``order``. The console draws
them; ``damselfly dashboards run`` prints them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

HERE: Final = Path(__file__).parent
CHARTS: Final = ("line", "bar", "table")
_HEADER: Final = re.compile(r"^--\s*(\w+)\s*:\s*(.*?)\s*$")


@dataclass(frozen=True)
class Panel:
    name: str
    title: str
    chart: str
    sql: str
    description: str = ""
    order: int = 100


def parse_panel(name: str, text: str) -> Panel:
    """Read a panel's header and SQL. Raises ``ValueError`` naming what is missing."""
    header: dict[str, str] = {}
    for line in text.splitlines():
        m = _HEADER.match(line)
        if not m:
            break
        header[m.group(1).lower()] = m.group(2)
    title, chart = header.get("title"), header.get("chart")
    if not title:
        raise ValueError(f"panel {name}: no '-- title:' header line")
    if chart not in CHARTS:
        raise ValueError(f"panel {name}: '-- chart:' must be one of {', '.join(CHARTS)}")
    try:
        order = int(header.get("order", "100"))
    except ValueError:
        raise ValueError(f"panel {name}: '-- order:' must be a whole number") from None
    return Panel(name, title, chart, text.strip(), header.get("description", ""), order)


def panels(directory: Path = HERE) -> list[Panel]:
    """Every panel, by ``order`` then name."""
    found = [parse_panel(p.stem, p.read_text()) for p in directory.glob("*.sql")]
    return sorted(found, key=lambda p: (p.order, p.name))


def panel(name: str, directory: Path = HERE) -> Panel:
    """One panel by name. Raises ``ValueError`` listing the known names."""
    path = directory / f"{name}.sql"
    if not re.fullmatch(r"[\w\-]+", name) or not path.exists():
        known = ", ".join(p.stem for p in sorted(directory.glob("*.sql")))
        raise ValueError(f"no dashboard panel {name!r}; have {known}")
    return parse_panel(name, path.read_text())

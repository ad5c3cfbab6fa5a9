"""Run every benchmark module (``python -m bench``), or those named: ``python -m bench peer``."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main(names: list[str]) -> int:
    here = Path(__file__).parent
    modules = sorted(p.stem for p in here.glob("bench_*.py"))
    chosen = [m for m in modules if not names or m.removeprefix("bench_") in names]
    if not chosen:
        print(f"no benchmark matches {names}; have {modules}", file=sys.stderr)
        return 2
    for module in chosen:
        print(f"== {module}", flush=True)
        runpy.run_module(f"bench.{module}", run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

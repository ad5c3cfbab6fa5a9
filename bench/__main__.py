"""Run every benchmark module (``python -m bench``), or those named (``python -m bench
swarm small_files``), then gather every ``bench/results/*.json`` into one report (printed,
``bench/results/REPORT.md`` and ``bench/README.md``). ``python -m bench report`` only
gathers. A benchmark that fails is named and the others still run; the exit code says so."""

from __future__ import annotations

import runpy
import sys
import traceback
from pathlib import Path

from bench import report


def main(names: list[str]) -> int:
    here = Path(__file__).parent
    modules = sorted(p.stem for p in here.glob("bench_*.py"))
    chosen = [] if names == ["report"] else [
        m for m in modules if not names or m.removeprefix("bench_") in names]
    if not chosen and names != ["report"]:
        print(f"no benchmark matches {names}; have {modules}", file=sys.stderr)
        return 2
    failed = []
    for module in chosen:
        print(f"== {module}", flush=True)
        sys.argv = [module]  # the benchmark parses its own (empty) command line
        try:
            runpy.run_module(f"bench.{module}", run_name="__main__")
        except RuntimeError as exc:  # a failure the benchmark explained in one line
            print(f"{module} failed: {exc}", file=sys.stderr)
            failed.append(module)
        except Exception:  # noqa: BLE001 - one broken benchmark must not hide the others
            traceback.print_exc()
            failed.append(module)
    print("== report", flush=True)
    report.main()
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

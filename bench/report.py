"""Benchmark results: each benchmark writes ``bench/results/<name>.json``; this module
renders them all as one Markdown report (printed, written to ``bench/results/REPORT.md``
and between the markers of ``bench/README.md``), and draws completion-time plots.

A result with ``columns`` and ``rows`` renders as a table of those columns; any other
result (other benchmarks' own formats) renders its scalar fields, flattened, as name/value.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from damselfly.services.runtime.procs import write_ready

HERE: Final = Path(__file__).resolve().parent
RESULTS: Final = Path(os.environ.get("BENCH_RESULTS", HERE / "results"))
README: Final = HERE / "README.md"
BEGIN: Final = "<!-- bench:begin -->"
END: Final = "<!-- bench:end -->"
FIRST: Final = ("swarm", "small_files")


def write_result(name: str, result: Mapping[str, Any]) -> Path:
    """Write ``results/<name>.json`` atomically, stamped with when and where it ran."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    write_ready(path, {"name": name, "measured_at": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                  time.gmtime()),
                       "cpus": os.cpu_count(), **result})
    return path


def cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, object]]:
    """Scalar leaves of nested mappings as ``(dotted.name, value)``; lists are skipped."""
    out: list[tuple[str, object]] = []
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.extend(flatten(value, f"{prefix}{key}."))
        elif not isinstance(value, list):
            out.append((f"{prefix}{key}", value))
    return out


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def render(result: Mapping[str, Any]) -> str:
    """One result as a Markdown section."""
    title = result.get("title") or result.get("name", "benchmark")
    parts = [f"### {title}"]
    if result.get("measured_at"):
        parts.append(f"Measured {result['measured_at']} on {result.get('cpus', '?')} CPUs.")
    if isinstance(result.get("params"), Mapping):
        parts.append("Parameters: " + ", ".join(f"{k}={cell(v)}"
                                                for k, v in result["params"].items()) + ".")
    rows = result.get("rows")
    if isinstance(rows, list) and rows and isinstance(result.get("columns"), list):
        used = [c for c in result["columns"] if any(c in r for r in rows)]
        parts.append(table(used, [[r.get(c) for c in used] for r in rows]))
    else:
        skip = {"name", "title", "measured_at", "cpus", "params", "command", "notes"}
        parts.append(table(["figure", "value"],
                           [(k, v) for k, v in flatten(result) if k not in skip]))
    if result.get("notes"):
        parts.append("\n".join(f"- {note}" for note in result["notes"]))
    if result.get("command"):
        parts.append(f"Reproduce: `{result['command']}`")
    return "\n\n".join(parts)


def aims(results: Sequence[Mapping[str, Any]]) -> list[tuple[str, object, str, str]]:
    """The issues' aims against the measured figures: ``(figure, value, aim, met)``; the
    swarm's for every file size and peer count measured."""
    by_name = {r.get("name"): r for r in results}
    out: list[tuple[str, object, str, str]] = []

    def check(figure: str, value: object, aim: str, ok: bool) -> None:
        out.append((figure, value, aim, "yes" if ok else "no"))

    swarm = by_name.get("swarm", {})
    link = swarm.get("params", {}).get("link_MiBps")
    for row in swarm.get("rows", []):
        where = f"F={row.get('mib')} MiB, N={row['peers']}"
        if row.get("system") == "damselfly, one link" and link and "mib_s" in row:
            share = round(row["mib_s"] / link, 3)
            check(f"one child from one parent / link rate, F={row.get('mib')} MiB", share,
                  ">= 0.95", share >= 0.95)
        if row.get("system") != "damselfly" or "slowest_s" not in row:
            continue
        check(f"slowest-peer efficiency, {where}", row["eff_slowest"], ">= 0.8",
              row["eff_slowest"] >= 0.8)
        if "vs_bittorrent" in row:
            check(f"slowest peer vs BitTorrent, {where}", row["vs_bittorrent"], "<= 0.7",
                  row["vs_bittorrent"] <= 0.7)
        check(f"origin bytes / F, {where}", row["origin_ratio"], "<= 1.02",
              row["origin_ratio"] <= 1.02)
    for r in by_name.get("get_startup", {}).get("rows", []):
        if r.get("command", "").startswith("damselfly get"):
            check(f"{r['command']}: p50 ms", r["p50_ms"], "<= 150", r["p50_ms"] <= 150)
            check(f"{r['command']}: peak RSS MiB", r["max_rss_mib"], "<= 38.1 (40 MB)",
                  r["max_rss_mib"] <= 40e6 / (1 << 20))
    for r in by_name.get("control_plane", {}).get("rows", []):
        if r.get("hosts") == 15000:
            check("control plane, 15,000 hosts: decision p99 ms", r["decision_p99_ms"],
                  "<= 100", r["decision_p99_ms"] <= 100)
            check("control plane, 15,000 hosts: scheduler peak RSS MiB",
                  r["scheduler_peak_rss_mib"], "<= 1024", r["scheduler_peak_rss_mib"] <= 1024)
            check("control plane, 15,000 hosts: fold rate / raw consume", r["fold_vs_raw"],
                  ">= 1", r["fold_vs_raw"] >= 1)
    small = [r for r in by_name.get("small_files", {}).get("rows", [])
             if r.get("files") == "all sizes" and r.get("in_flight") == 1]
    if small:
        check("small files p50 latency (ms)", small[0]["p50_ms"], "<= 50",
              small[0]["p50_ms"] <= 50)
    return out


def render_all(results: Sequence[Mapping[str, Any]]) -> str:
    parts = [render(r) for r in results]
    if met := aims(results):
        parts.insert(0, "### Aims\n\n" + table(["figure", "measured", "aim", "met"], met))
    return "\n\n".join(parts) + "\n"


def load_results(folder: Path = RESULTS) -> list[dict[str, Any]]:
    """Every ``*.json`` under ``folder``, the headline ones first, then by name; unreadable
    files become a note."""
    results = []
    def order(path: Path) -> tuple[int, str]:
        return (FIRST.index(path.stem) if path.stem in FIRST else len(FIRST), path.stem)

    for path in sorted(folder.glob("*.json"), key=order):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            data = {"name": path.stem, "notes": [f"unreadable: {exc}"]}
        results.append({"name": path.stem, **data} if isinstance(data, dict)
                       else {"name": path.stem, "value": data})
    return results


def splice(text: str, body: str) -> str:
    """``text`` with what lies between the bench markers replaced by ``body`` (the markers
    are appended when missing)."""
    head, found, rest = text.partition(BEGIN)
    if not found:
        return f"{text.rstrip()}\n\n{BEGIN}\n{body}{END}\n"
    _, found, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{body}{END}{tail if found else chr(10)}"


def plot_cdf(path: Path, title: str, xlabel: str, series: Mapping[str, Sequence[float]],
             mark: tuple[str, float] | None = None, logx: bool = False) -> None:
    """The distribution (CDF) of each series, with an optional labelled vertical ``mark``;
    skipped (with a line saying so) when matplotlib is not installed."""
    try:
        # The optional bench extra: unresolved for mypy when absent, typed when installed.
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        print(f"matplotlib not installed: no plot {path.name} (pip install -e '.[bench]')")
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, times in series.items():
        ordered = sorted(times)
        ax.step(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], where="post",
                label=name)
    if mark is not None:
        ax.axvline(mark[1], color="black", linestyle="--", label=mark[0])
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction done")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    results = load_results()
    if not results:
        print(f"no results under {RESULTS}")
        return
    body = render_all(results)
    print(body)
    (RESULTS / "REPORT.md").write_text(body)
    if README.exists():
        README.write_text(splice(README.read_text(), body))


if __name__ == "__main__":
    main()

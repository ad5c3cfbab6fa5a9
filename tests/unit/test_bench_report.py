from __future__ import annotations

from bench.report import BEGIN, END, aims, flatten, render, render_all, splice


def test_a_result_with_rows_renders_its_columns_that_have_values() -> None:
    text = render({"name": "swarm", "title": "Swarm", "params": {"file_bytes": 8},
                   "columns": ["system", "peers", "eff_slowest", "error"],
                   "rows": [{"system": "damselfly", "peers": 10, "eff_slowest": 0.81234},
                            {"system": "bittorrent", "peers": 10, "eff_slowest": 0.5}],
                   "command": "make bench"})
    assert text.startswith("### Swarm")
    assert "Parameters: file_bytes=8." in text
    assert "| system | peers | eff_slowest |" in text
    assert "| damselfly | 10 | 0.8123 |" in text
    assert "error" not in text
    assert text.endswith("Reproduce: `make bench`")


def test_another_benchmarks_nested_figures_render_as_name_value() -> None:
    text = render({"fold": {"events": 72120, "per_s": 12851.6}, "machine": "2 cpus",
                   "samples": [1, 2, 3]})
    assert "| fold.events | 72120 |" in text
    assert "| fold.per_s | 1.285e+04 |" in text
    assert "| machine | 2 cpus |" in text
    assert "samples" not in text


def test_flatten_keeps_scalars_only() -> None:
    assert flatten({"a": {"b": 1, "c": [1]}, "d": None}) == [("a.b", 1), ("d", None)]


def test_cells_cannot_break_the_table() -> None:
    text = render({"name": "x", "columns": ["error"], "rows": [{"error": "a|b\nc"}]})
    assert "| a\\|b c |" in text


def test_splice_replaces_only_between_the_markers() -> None:
    readme = f"# Bench\n\nintro\n\n{BEGIN}\nold table\n{END}\n\nafter\n"
    out = splice(readme, "new table\n")
    assert out == f"# Bench\n\nintro\n\n{BEGIN}\nnew table\n{END}\n\nafter\n"
    assert splice(out, "new table\n") == out


def test_splice_appends_markers_when_missing() -> None:
    out = splice("# Bench\n", render_all([{"name": "a", "value": 1}]))
    assert out.startswith("# Bench\n\n" + BEGIN + "\n### a")
    assert out.endswith(END + "\n")


def test_the_aims_table_judges_every_swarm_the_link_and_small_files() -> None:
    swarm = {"name": "swarm", "columns": ["system"], "params": {"link_MiBps": 8.0}, "rows": [
        {"system": "damselfly, one link", "mib": 64, "peers": 1, "mib_s": 7.7},
        {"system": "damselfly", "mib": 64, "peers": 10, "slowest_s": 9.0, "eff_slowest": 0.6,
         "origin_ratio": 1.0, "vs_bittorrent": 0.75},
        {"system": "damselfly", "mib": 64, "peers": 50, "slowest_s": 9.0,
         "eff_slowest": 0.81, "origin_ratio": 1.2},
        {"system": "damselfly", "mib": 64, "peers": 100, "error": "timed out"},
        {"system": "bittorrent", "mib": 64, "peers": 50, "slowest_s": 18.0,
         "eff_slowest": 0.4, "origin_ratio": 6.5}]}
    small = {"name": "small_files", "columns": ["files"], "rows": [
        {"files": "1 KiB", "in_flight": 1, "p50_ms": 20.0},
        {"files": "all sizes", "in_flight": 1, "p50_ms": 60.0},
        {"files": "all sizes", "in_flight": 16, "p50_ms": 400.0}]}
    assert aims([swarm, small]) == [
        ("one child from one parent / link rate, F=64 MiB", 0.963, ">= 0.95", "yes"),
        ("slowest-peer efficiency, F=64 MiB, N=10", 0.6, ">= 0.8", "no"),
        ("slowest peer vs BitTorrent, F=64 MiB, N=10", 0.75, "<= 0.7", "no"),
        ("origin bytes / F, F=64 MiB, N=10", 1.0, "<= 1.02", "yes"),
        ("slowest-peer efficiency, F=64 MiB, N=50", 0.81, ">= 0.8", "yes"),
        ("origin bytes / F, F=64 MiB, N=50", 1.2, "<= 1.02", "no"),
        ("small files p50 latency (ms)", 60.0, "<= 50", "no"),
    ]
    assert render_all([swarm, small]).startswith("### Aims\n\n| figure | measured | aim | met |")


def test_no_aims_without_headline_results() -> None:
    assert aims([{"name": "peer", "file_mib": 1}]) == []
    assert not render_all([{"name": "peer", "file_mib": 1}]).startswith("### Aims")

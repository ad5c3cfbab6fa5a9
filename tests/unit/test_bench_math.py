from __future__ import annotations

import math

import pytest

from bench.swarm_math import lower_bound, percentile, swarm_summary

MiB = 1 << 20


def test_the_swarm_term_binds_when_peers_upload_little() -> None:
    # 10 peers x 8 MiB must cross 2 MiB/s of origin + 10 x 1 MiB/s of peers.
    assert lower_bound(8 * MiB, 10, 1 * MiB, 2 * MiB) == pytest.approx(80 / 12)


def test_the_origin_term_binds_when_peers_upload_a_lot() -> None:
    assert lower_bound(8 * MiB, 4, 100 * MiB, 2 * MiB) == pytest.approx(4.0)


def test_the_download_term_binds_when_peers_download_slowly() -> None:
    assert lower_bound(8 * MiB, 4, 100 * MiB, 100 * MiB, download=1 * MiB) == pytest.approx(8.0)


def test_without_peer_upload_the_bound_is_client_server() -> None:
    assert lower_bound(8 * MiB, 5, 0, 2 * MiB) == pytest.approx(20.0)


@pytest.mark.parametrize("args", [(0, 1, 1, 1), (1, 0, 1, 1), (1, 1, -1, 1), (1, 1, 1, 0)])
def test_nonsense_inputs_are_refused(args: tuple[int, int, int, int]) -> None:
    with pytest.raises(ValueError):
        lower_bound(*args)
    with pytest.raises(ValueError):
        lower_bound(1, 1, 1, 1, download=0)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0], 99) == 3.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 0)


def test_summary_reports_efficiency_against_the_bound() -> None:
    summary = swarm_summary([2.0, 4.0, 5.0, 8.0], bound=4.0, origin_bytes=3 * MiB, size=2 * MiB)
    assert summary["slowest_s"] == 8.0
    assert summary["eff_slowest"] == 0.5
    assert summary["eff_p50"] == 1.0
    assert summary["origin_ratio"] == 1.5
    assert math.isclose(summary["eff_p99"], 0.5)


def test_origin_byte_ranges_follow_http_semantics() -> None:
    from bench.swarm_origin import byte_range

    assert byte_range(slice(0, 10), 100) == (0, 10)
    assert byte_range(slice(90, 200), 100) == (90, 100)
    assert byte_range(slice(-10, None), 100) == (90, 100)
    assert byte_range(slice(5, None), 100) == (5, 100)
    assert byte_range(slice(100, None), 100) is None


def test_swarm_settings_from_the_environment_fail_in_one_line() -> None:
    from bench.bench_swarm import numbers

    assert numbers("BENCH_SWARM_PEERS", "10", "10,50") == [10, 50]
    assert numbers("BENCH_SWARM_MIB", "64", "0.5") == [0.5]
    for bad in ("", "ten", "10,0", "-1"):
        with pytest.raises(RuntimeError, match="BENCH_SWARM_PEERS"):
            numbers("BENCH_SWARM_PEERS", "10", bad)


def test_lab_hosts_stay_in_the_benchmarking_range_with_pinnable_macs() -> None:
    import ipaddress

    from bench.netlab import address, mac, tbf_args

    benchmarking = ipaddress.ip_network("198.18.0.0/15")
    assert {ipaddress.ip_address(address(i)) in benchmarking for i in range(250)} == {True}
    assert address(0) == "198.18.0.1"
    assert len({mac(i) for i in range(250)}) == 250
    assert int(mac(0).split(":")[0], 16) & 0b10  # locally administered
    with pytest.raises(ValueError, match="does not fit"):
        address(253)
    assert tbf_args(8 * MiB)[:3] == ["tbf", "rate", f"{8 * MiB * 8}bit"]


def test_the_event_log_tells_first_pieces_parents_and_trouble() -> None:
    from bench.swarm_math import swarm_log_figures
    from damselfly.events.tasks import (
        BackToSourceStarted,
        PeerRegistered,
        PieceFinished,
        RescheduleRequested,
    )


    def reg(peer: str, host: str, at: float) -> PeerRegistered:
        return PeerRegistered(id=f"r{peer}", at=at, peer_id=peer, host_id=host, url="u",
                              cluster="c", task_id="t")

    def piece(peer: str, at: float, parent: str = "") -> PieceFinished:
        return PieceFinished(id=f"p{peer}{at}", at=at, peer_id=peer, piece=0, length=1,
                             digest="d", parent_id=parent, cluster="c", task_id="t")

    events = [reg("s", "seedhost", 100.0), reg("a", "ha", 100.0), reg("b", "hb", 100.0),
              BackToSourceStarted(id="x", at=100.1, peer_id="s", reason="seed", cluster="c",
                                  task_id="t"),
              piece("s", 100.5), piece("a", 101.0, "s"), piece("a", 101.5, "b"),
              piece("b", 103.0, "s"),
              RescheduleRequested(id="y", at=104.0, peer_id="b", reason="stalled", cluster="c",
                                  task_id="t")]
    figures = swarm_log_figures(events, 100.0, "seedhost")
    assert figures["seed_first_piece_s"] == pytest.approx(0.5)
    assert figures["child_first_piece_p50_s"] == pytest.approx(1.0)
    assert figures["child_first_piece_max_s"] == pytest.approx(3.0)
    assert figures["parents_per_child_p50"] == 1
    assert (figures["reschedules"], figures["back_to_source"]) == (1, 1)
    assert figures["pieces_from_seed"] == 2


def test_small_files_count_from_the_environment_fails_in_one_line() -> None:
    from bench.bench_small_files import file_count

    assert file_count("25") == 25
    for bad in ("", "0", "-3", "many"):
        with pytest.raises(RuntimeError, match="BENCH_SMALL_COUNT"):
            file_count(bad)

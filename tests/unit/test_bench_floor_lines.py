"""The bench's floor lines: what a night of the nightly's size cannot cost less than, and whether
the emulators alone overrun the 20,000 reports' 2 × bound (figures from bench/results.json)."""

from __future__ import annotations

import os

from bench.run import floor_lines


def test_floor_is_rays_night_plus_each_reports_library_work() -> None:
    results = {
        "floor": {"ray": {"actors": 6, "startup_cpu_s": 0.5, "idle_cpu_per_s": 0.01, "driver_init_cpu_s": 0.3},
                  "library": {"meta": {"cpu_ms_per_report": 4.0, "requests_per_report": 1.0},
                              "yahoo_ads": {"cpu_ms_per_report": 8.0, "requests_per_report": 3.0}}},
        "nightly": {"wall_s": 40.0, "reports": 1000, "our_cpu_ms_per_report": 20.0},
    }
    [line] = floor_lines(results)
    # Ray: 0.3 + 6 × (0.5 + 0.01 × 40) = 5.7 s over 1,000 reports = 5.7 ms, + the mix (4 + 8) / 2 = 6 ms
    assert "6.0 ms for the nightly's mix" in line and "= 5.7s over the nightly's 40s" in line
    assert "cannot cost less than 11.7 ms/report here (measured 20.0)" in line


def test_twenty_thousand_line_adds_the_rigs_core_seconds_to_the_reports_floor() -> None:
    cores = os.cpu_count() or 1
    scale = {"bound_s": 10.0, "reports": 20_000, "wall_over_bound": 8.0,
             "cpu_s_by_process": {"fetchers": 500.0, "fake-gcs-server": 30.0, "simulators": 10.0}}
    [line] = floor_lines({"scale": scale})
    assert f"that is {20.0 * cores:.1f} core-s on {cores} cores" in line and "alone used 40 of the scale run" in line
    library = {"meta": {"cpu_ms_per_report": 4.0, "requests_per_report": 1.0},
               "yahoo_ads": {"cpu_ms_per_report": 6.0, "requests_per_report": 3.0}}
    line = floor_lines({"scale": scale, "floor": {"library": library}})[0]
    # 20,000 reports × 5 ms = 100 core-s; (40 + 100) core-s over the cores, against the 10 s bound
    assert "would use 100 more" in line and f"at least {140 / cores / 10:.1f} × the bound here (measured 8.0 ×)" in line


def test_no_line_without_the_runs_it_needs() -> None:
    assert floor_lines({}) == []
    assert floor_lines({"nightly": {"wall_s": 40.0, "reports": 1000}}) == []

"""Replica starts dated from the cluster's logs: the lines a real local head wrote.

tests/fixtures/starts/lines.json is what ``remote.starts.start_lines`` returned for an app of
the demo model on the local head: its first replica (deployed, then stopped when the app
scaled to zero) and the replica one request woke it with. The live path is
notebooks/04_autoscaling.ipynb (tests/test_integration.py).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import cast

import pytest

from nbserve.observe.starts import PHASES, ColdStart, ColdStarts
from nbserve.remote.starts import StartLines

LINES = cast(
    list[StartLines],
    json.loads((Path(__file__).parent / "fixtures" / "starts" / "lines.json").read_text()),
)


def test_each_phase_is_dated_from_its_line() -> None:
    starts = ColdStarts.from_lines("cs", list(reversed(LINES)))
    assert [s.replica_id for s in starts.starts] == ["plsvss1p", "ho4ehyh1"]  # oldest first
    first, woken = starts.starts
    assert (first.state, woken.state) == ("DEAD", "ALIVE") and starts.latest is woken
    assert first.requested == datetime(2026, 12, 4, 23, 40, 4, 265000)
    assert first.scheduled == datetime(2026, 12, 4, 23, 40, 14, 863000)
    assert first.engine_started == datetime(2026, 12, 4, 23, 40, 32)
    assert first.weights_loaded == datetime(2026, 12, 4, 23, 40, 41)
    assert first.engine_ready == datetime(2026, 12, 4, 23, 40, 49)
    assert first.running == datetime(2026, 12, 4, 23, 40, 56, 850000)
    assert first.total_s == 52.585  # Serve's controller said "after 52.6s"
    durations = woken.durations()
    assert list(durations) == list(PHASES[1:])
    assert durations["scheduled"] == 10.033 and durations["engine_ready"] == 9.0
    assert sum(d for d in durations.values() if d is not None) == pytest.approx(woken.total_s)


def test_a_start_with_lines_missing_keeps_what_it_has() -> None:
    partial = dict(LINES[1], engine=[], replica=[])
    start = ColdStart.from_lines(cast(StartLines, partial))
    assert start.requested is not None and start.running is not None
    assert start.engine_started is None and start.scheduled is None
    durations = start.durations()
    assert durations["scheduled"] is None and durations["engine_ready"] is None
    assert durations["running"] == start.total_s  # measured from the last phase known
    pending = ColdStart.from_lines(
        cast(StartLines, dict(partial, controller=partial["controller"][:1]))
    )
    assert pending.running is None and pending.total_s is None


def test_the_table_shows_seconds_per_phase() -> None:
    starts = ColdStarts.from_lines("cs", LINES)
    page = starts._repr_html_()
    assert "ho4ehyh1" in page and "52.6" in page and "weights_loaded (s)" in page
    frame = starts.to_frame()
    assert list(frame["replica_id"]) == ["plsvss1p", "ho4ehyh1"]
    assert {"requested", "engine_ready_s", "total_s"} <= set(frame.columns)
    empty = ColdStarts("none", [])
    assert empty.latest is None and len(empty) == 0 and "replica" in empty._repr_html_()

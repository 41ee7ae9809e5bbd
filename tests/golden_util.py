"""Golden-file comparison shared by the rendering tests.

Run pytest with NBSERVE_UPDATE_GOLDEN=1 to rewrite tests/golden/ after an intended change, then
review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("NBSERVE_UPDATE_GOLDEN") == "1"


def check_golden(name: str, text: str) -> None:
    """Assert that ``text`` equals tests/golden/NAME.yaml (rewrite it first when updating)."""
    path = GOLDEN / f"{name}.yaml"
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"{path} is missing; run with NBSERVE_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(encoding="utf-8"), (
        f"{name} renders differently from {path.name}; if the change is intended, rerun with "
        "NBSERVE_UPDATE_GOLDEN=1 and review the diff"
    )

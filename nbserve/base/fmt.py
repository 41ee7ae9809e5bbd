"""How nbserve writes numbers and tables for people: one way each, in text and in HTML.

Owns the formatting of optional numbers, milliseconds, percentages and durations, and the one
HTML table every ``_repr_html_`` uses (escaped cells, an optional caption). It computes
nothing: the values come formatted from whoever owns them.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

__all__ = ["duration", "html_table", "ms", "num", "pct"]


def num(value: float | None, fmt: str = "{:.0f}") -> str:
    """A number with ``fmt``, or ``-`` when it is unknown.

    Example:
        >>> num(412.54, "{:.1f}"), num(None)
        ('412.5', '-')
    """
    return "-" if value is None else fmt.format(value)


def ms(seconds: float | None) -> str:
    """Seconds as whole milliseconds, or ``-``.

    Example:
        >>> ms(0.0174)
        '17 ms'
    """
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def pct(fraction: float | None) -> str:
    """A fraction (0..1) as a percentage with one decimal, or ``-``.

    Example:
        >>> pct(0.125)
        '12.5%'
    """
    return "-" if fraction is None else f"{fraction * 100:.1f}%"


def duration(seconds: float) -> str:
    """A duration the way a person reads it: ``850 ms``, ``12.3 s``, ``4 min 05 s``.

    Example:
        >>> duration(0.85), duration(12.34), duration(245)
        ('850 ms', '12.3 s', '4 min 05 s')
    """
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def html_table(
    header: Sequence[str], rows: Iterable[Sequence[object]], *, caption: str = ""
) -> str:
    """An HTML table of escaped cells; ``caption`` is HTML already (escape what it holds).

    Example:
        >>> html_table(["app", "status"], [["tiny", "RUNNING"]])
        '<table><tr><th>app</th><th>status</th></tr><tr><td>tiny</td><td>RUNNING</td></tr></table>'
    """
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    cap = f"<caption>{caption}</caption>" if caption else ""
    return f"<table>{cap}<tr>{head}</tr>{body}</table>"

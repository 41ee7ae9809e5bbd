"""Which route prefix ``deploy`` refuses: one that overlaps another running app's prefix.

Serve's proxy sends a request to the app with the longest prefix that matches it on a path
segment boundary, and "/" matches every path. So two apps whose prefixes are equal, or one under
the other, share part of one API. ``_route_prefix_taken`` is a pure function over Serve's
``applications`` details: these tests call it directly, no cluster.
"""

from __future__ import annotations

from typing import Any

import pytest

from nbserve.remote.serve import _route_prefix_taken


def running(**prefixes: str | None) -> dict[str, Any]:
    """Serve's details of running apps, each at a prefix (None: no HTTP route)."""
    return {name: {"route_prefix": prefix} for name, prefix in prefixes.items()}


@pytest.mark.parametrize(
    ("prefix", "theirs"),
    [
        ("/a", "/a"),  # equal
        ("/a/v1", "/a"),  # under theirs: takes /a/v1/... from app a
        ("/a", "/a/v1"),  # contains theirs: loses /a/v1/... to the other app
        ("/a/b/c", "/a"),
        ("/", "/a"),  # "/" matches every path
        ("/a", "/"),
    ],
)
def test_an_overlapping_prefix_is_refused_naming_the_other_app(prefix: str, theirs: str) -> None:
    why = _route_prefix_taken("new", prefix, running(a=theirs))
    assert "'a'" in why and repr(theirs) in why and "route_prefix=" in why, why


@pytest.mark.parametrize(
    ("prefix", "theirs"),
    [
        ("/ab", "/a"),  # not on a segment boundary
        ("/a", "/ab"),
        ("/a-v1", "/a"),
        ("/b/v1", "/a"),
        ("/b", None),  # an app with no HTTP route
    ],
)
def test_a_prefix_apart_from_the_others_is_free(prefix: str, theirs: str | None) -> None:
    assert _route_prefix_taken("new", prefix, running(a=theirs)) == ""


def test_the_apps_own_prefix_and_the_declared_one_count() -> None:
    # Redeploying an app never overlaps itself; an app Serve has not set up yet is
    # known by the prefix in its declared config.
    assert _route_prefix_taken("a", "/a/v1", running(a="/a")) == ""
    declared = {"a": {"route_prefix": None, "deployed_app_config": {"route_prefix": "/a"}}}
    assert "'a'" in _route_prefix_taken("new", "/a/v1", declared)

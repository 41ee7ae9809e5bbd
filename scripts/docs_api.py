"""A griffe extension for the docs site's API pages (mkdocs.yml loads it for mkdocstrings).

- nbserve's docstrings head their doctests ``Example:`` (the Google style guide's spelling,
  which ruff's pydocstyle accepts); griffe's Google parser knows only ``Examples:`` as a
  section and would render the doctests as prose, so the heading is renamed before parsing.
- A spec field's documentation is its ``Field(description=...)`` (every field has one, and a
  test checks it): it becomes the field's docstring, so the API pages list each field with it.
"""

from __future__ import annotations

import ast
import contextlib
import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^Example:[ \t]*$", re.MULTILINE)


class ApiPages(griffe.Extension):
    """``Example:`` sections as code, and pydantic fields documented by their description."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rename the ``Example:`` heading in every docstring griffe loads."""
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE.sub("Examples:", obj.docstring.value)

    def on_attribute_instance(self, *, attr: griffe.Attribute, **kwargs: Any) -> None:
        """Give a ``Field(description="...")`` attribute without a docstring its description."""
        call = attr.value
        if attr.docstring is not None or not isinstance(call, griffe.ExprCall):
            return
        if str(call.function) not in ("Field", "pydantic.Field"):
            return
        for arg in call.arguments:
            if isinstance(arg, griffe.ExprKeyword) and arg.name == "description":
                with contextlib.suppress(ValueError, SyntaxError):
                    text = ast.literal_eval(str(arg.value))
                    if isinstance(text, str):
                        attr.docstring = griffe.Docstring(text, parent=attr)

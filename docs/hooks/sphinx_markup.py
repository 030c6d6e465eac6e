"""griffe extension for the API reference: the reStructuredText markup of noether's docstrings, made
readable as Markdown.

The docstrings are written for ``help()`` and Sphinx-style tools: ``:class:`~noether_core.Run```
roles, and ``::`` before a literal block. mkdocstrings renders Markdown, where those would show as
typed, so the roles become code spans (``~`` keeps the last component, as in Sphinx) and ``::`` a
colon. Only the rendering changes; the docstrings stay as they are.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Module, Object

# :class:`~a.b.C`, :func:`f`, :meth:`text <target>`: the role's name and its content
ROLE = re.compile(r":(?:py:)?[a-z]+:`(?P<tilde>~?)(?P<text>[^`<]+?)(?:\s*<[^`>]+>)?`")
LITERAL_BLOCK = re.compile(r"(?m)(?<=\S)::$")


def markdown_of(text: str) -> str:
    def code(match: re.Match[str]) -> str:
        target = match["text"].strip()
        return f"`{target.rsplit('.', 1)[-1] if match['tilde'] else target}`"

    return LITERAL_BLOCK.sub(":", ROLE.sub(code, text))


def _rewrite(obj: Object) -> None:
    if obj.docstring is not None:
        obj.docstring.value = markdown_of(obj.docstring.value)
    for member in obj.members.values():
        if not member.is_alias:
            _rewrite(member)  # type: ignore[arg-type]


class SphinxMarkup(Extension):
    def on_package(self, *, pkg: Module, **kwargs: Any) -> None:
        _rewrite(pkg)

"""MkDocs hook: the API reference pages, generated from the code.

``<!-- noether: public face -->`` becomes one mkdocstrings directive per entry of ``noether_core._FACE``
(under the headings its comments give), naming the object by the module that defines it:
``noether_core/__init__.py`` loads its names lazily, and the real objects, with their docstrings, live
there. ``<!-- noether: hook specs -->`` becomes one directive per event of ``HOOK_NAMES``, in the order
of the loop. mkdocstrings then renders the docstrings, reading the source statically (no torch needed).
"""

from __future__ import annotations

from typing import Any

import static_source

FACE_MARKER = "<!-- noether: public face -->"
HOOKS_MARKER = "<!-- noether: hook specs -->"


def face_markdown(tree: static_source.SourceTree | None = None) -> str:
    """One ``##`` section per group of the public face, one directive per name."""
    lines: list[str] = []
    group = None
    for entry in static_source.public_face(tree):
        if entry.group != group:
            group = entry.group
            lines += [f"## {group}", ""]
        lines += [f"::: {entry.module}.{entry.name}", ""]
    return "\n".join(lines)


def hooks_markdown(tree: static_source.SourceTree | None = None) -> str:
    """One directive per event, each its own ``##`` section."""
    lines: list[str] = []
    for name in static_source.hook_names(tree):
        lines += [
            f"::: {static_source.HOOKSPECS_MODULE}.{name}",
            "    options:",
            "      heading_level: 2",
            "      docstring_section_style: list",
            "",
        ]
    return "\n".join(lines)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    if FACE_MARKER in markdown:
        markdown = markdown.replace(FACE_MARKER, face_markdown())
    if HOOKS_MARKER in markdown:
        markdown = markdown.replace(HOOKS_MARKER, hooks_markdown())
    return markdown

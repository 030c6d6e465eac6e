"""MkDocs hook: a page that holds ``<!-- noether: the loop -->`` shows the training loop's pseudocode,
taken from the docstring of ``noether_core/plugins/hookspecs.py``, so the loop is told in one place only.

The module is read with ``ast``, not imported: building the docs needs no torch.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path
from typing import Any

MARKER = "<!-- noether: the loop -->"
HOOKSPECS = Path(__file__).resolve().parents[2] / "noether_core" / "plugins" / "hookspecs.py"


def loop_pseudocode(path: Path = HOOKSPECS) -> str:
    """The literal block (after the first ``::``) of the module docstring of ``path``, dedented."""
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    _, found, rest = docstring.partition("::\n\n")
    if not found:
        raise ValueError(f"{path}: the module docstring has no literal block (::) with the loop")
    block = []
    for line in rest.splitlines():
        if line and not line.startswith(" "):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block)).strip("\n")


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, f"```text\n{loop_pseudocode()}\n```")

"""The bundled example run: a small classifier on synthetic blobs, with train/val/test sets."""

from __future__ import annotations

from importlib import resources


def example_yaml() -> str:
    """The example config's YAML text (what ``noether config example`` prints)."""
    return resources.files(__package__).joinpath("example.yaml").read_text(encoding="utf-8")


__all__ = ["example_yaml"]

"""Benchmarks of noether's own cost; see ``benchmarks/README.md``. Not part of the installed package."""

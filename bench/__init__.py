"""Benchmarks: ``python -m bench.serving``, ``python -m bench.quality`` and the smaller ``python -m bench.<name>``."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the repository root: default paths, subprocesses' working directory

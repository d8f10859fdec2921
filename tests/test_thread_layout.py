"""The thread layout's defaults follow the cores this process may use; settings override them."""

from __future__ import annotations

import os

import pytest

from app.core.config import Settings, available_cores, default_decode_workers


@pytest.mark.parametrize(("cores", "workers"), [(1, 2), (2, 2), (8, 2), (12, 3), (16, 4), (32, 8), (128, 8)])
def test_decode_workers_are_a_quarter_of_the_cores_within_2_to_8(cores, workers) -> None:
    assert default_decode_workers(cores) == workers


def test_the_default_follows_the_cpu_affinity_and_a_setting_overrides_it(monkeypatch) -> None:
    if hasattr(os, "sched_getaffinity"):
        assert available_cores() == len(os.sched_getaffinity(0))
    assert Settings().decode_workers == default_decode_workers(available_cores())
    monkeypatch.setenv("PRODUCTREC_DECODE_WORKERS", "5")
    assert Settings().decode_workers == 5

"""The fuzzer ran enough cases (this module sorts last in ``tests/fuzz``: pytest keeps
file order)."""

from __future__ import annotations

import logging

import pytest

from .world import CASES, MIN_TOTAL_CASES, PROPERTIES

logger = logging.getLogger(__name__)


def test_zz_case_count() -> None:
    """The package ran at least ``MIN_TOTAL_CASES`` examples (run last: pytest keeps file
    order). Skipped when some properties were not selected."""
    absent = [name for name in PROPERTIES if not CASES[name]]
    if absent:
        pytest.skip(f"properties not run: {absent}")
    total = sum(CASES.values())
    logger.info("the fuzz ran %d cases: %s", total, dict(CASES))
    assert total >= MIN_TOTAL_CASES, f"only {total} cases: {dict(CASES)}"

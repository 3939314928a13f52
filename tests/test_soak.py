"""The soak script's short form: 20,000 requests against uvicorn, 30% of them abandoned."""

from __future__ import annotations

import pytest
import soak

pytestmark = pytest.mark.servers


def test_nothing_is_lost_under_load_with_abandoned_requests() -> None:
    report = soak.run(requests=20_000, abandon=0.3, time_limit=110)
    soak.REPORTS.append(report)
    assert report.passed, "\n".join(report.lines())
    assert report.fates["work left, cancelled"] > 0  # the load did abandon requests

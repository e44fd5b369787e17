"""HTML drift reports through Evidently and through the matplotlib fallback."""

from __future__ import annotations

import importlib.util

import numpy as np
import polars as pl
import pytest

from crmbet.monitoring.drift import detect_drift
from crmbet.monitoring.drift_report import write_drift_report

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tables() -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(0)

    def table(shift: float) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "avg_stake": rng.lognormal(2.0 + shift, 1.0, 800),
                "win_rate": rng.beta(5, 5, 800),
                "segment": rng.choice(["casual", "regular"], 800),
                "jurisdiction": ["MT"] * 800,
                "bonus_share": [None] * 800,
            },
            schema_overrides={"bonus_share": pl.Float64},
        )

    return table(0.0), table(1.0)


def test_matplotlib_report_lists_statuses(tables, tmp_path):
    report = detect_drift(*tables)
    path = tmp_path / "report.html"
    engine = write_drift_report(*tables, report, path, engine="matplotlib")
    page = path.read_text()
    assert engine == "matplotlib"
    assert page.count("<img") == 3
    assert "all_missing" in page
    assert "constant" in page
    assert "Drifted columns: avg_stake" in page
    assert "<td>nan</td>" not in page.lower()


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("evidently") is None,
    reason="Evidently is not installed (optional extra crmbet[report])",
)
def test_evidently_report_written(tables, tmp_path):
    report = detect_drift(*tables)
    path = tmp_path / "report.html"
    engine = write_drift_report(*tables, report, path, engine="evidently")
    assert engine == "evidently"
    assert path.stat().st_size > 10_000
    page = path.read_text()
    assert "crmbet drift rule" in page
    assert "all_missing" in page


def test_unknown_engine_rejected(tables, tmp_path):
    report = detect_drift(*tables)
    with pytest.raises(ValueError, match="engine"):
        write_drift_report(*tables, report, tmp_path / "r.html", engine="plotly")

"""HTML drift report: Evidently when it imports, matplotlib otherwise.

Evidently (0.7) draws the richest report, but it imports only with pandas
below 3 and its import takes seconds (11 s measured on a shared 2-core
machine), so it is loaded here, inside the report call, and never on the
serving path. When it cannot be imported or
fails on the data, the report falls back to a self-contained page with the
statistics of :mod:`crmbet.monitoring.drift` and one overlaid histogram per
column (PNG images embedded as base64, matplotlib's Agg backend).
"""

from __future__ import annotations

import base64
import html
import io
import logging
import re
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from crmbet.monitoring.drift import DriftReport, FeatureDrift

logger = logging.getLogger(__name__)

Engine = Literal["auto", "evidently", "matplotlib"]

#: Columns drawn in the matplotlib report, drifted ones first; more plots
#: make the page slow to open without adding much.
MAX_PLOTS = 40


def write_drift_report(
    reference: pl.DataFrame,
    current: pl.DataFrame,
    report: DriftReport,
    path: str | Path,
    *,
    engine: Engine = "auto",
) -> str:
    """Write the HTML report of ``report`` to ``path`` and return the engine used.

    Parameters
    ----------
    reference, current:
        The tables that ``report`` compared.
    report:
        Result of :func:`crmbet.monitoring.drift.detect_drift`.
    path:
        Output HTML file; parent folders are created.
    engine:
        ``"evidently"`` requires Evidently, ``"matplotlib"`` never imports it,
        ``"auto"`` tries Evidently and falls back to matplotlib.
    """
    if engine not in ("auto", "evidently", "matplotlib"):
        raise ValueError(
            f"engine={engine!r} is not one of 'auto', 'evidently', 'matplotlib'"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Evidently rejects empty columns, so it receives only the testable ones.
    # The crmbet table added to its page lists the statuses of the others.
    columns = [f.feature for f in report.tested]
    if engine in ("auto", "evidently") and not columns:
        logger.warning(
            "no testable column for Evidently; writing the matplotlib report"
        )
        engine = "matplotlib"
    if engine in ("auto", "evidently"):
        try:
            _write_evidently(reference.select(columns), current.select(columns), path)
            _insert_summary(path, report)
            logger.info("wrote the Evidently drift report to %s", path)
            return "evidently"
        except ImportError as error:
            if engine == "evidently":
                raise ImportError(
                    f"Evidently could not be imported ({error}); install "
                    "crmbet[report] "
                    "with pandas<3 or use engine='matplotlib'"
                ) from error
            logger.warning(
                "Evidently is unavailable (%s); writing the matplotlib report", error
            )
        except Exception as error:  # Evidently's own failures vary by version and data.
            if engine == "evidently":
                raise
            logger.warning(
                "Evidently failed on this data (%s: %s); writing the matplotlib report",
                type(error).__name__,
                error,
            )
    _write_matplotlib(reference, current, report, path)
    logger.info("wrote the matplotlib drift report to %s", path)
    return "matplotlib"


def _write_evidently(
    reference: pl.DataFrame, current: pl.DataFrame, path: Path
) -> None:
    # Evidently warns about its own deprecations and pandas behaviour; those
    # warnings concern its internals, not the caller, and tests treat
    # warnings as errors.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from evidently import Report
        from evidently.presets import DataDriftPreset

        snapshot = Report([DataDriftPreset()]).run(
            current_data=current.to_pandas(), reference_data=reference.to_pandas()
        )
        snapshot.save_html(str(path))


def _insert_summary(path: Path, report: DriftReport) -> None:
    """Insert crmbet's statistics table at the top of Evidently's page."""
    page = path.read_text(encoding="utf-8")
    section = (
        '<section style="font-family: sans-serif; margin: 1em;">'
        f"<h2>crmbet drift rule</h2>{_summary(report)}{_table(report)}</section>"
    )
    match = re.search(r"<body[^>]*>", page)
    if match is None:
        page = section + page
    else:
        page = page[: match.end()] + section + page[match.end() :]
    path.write_text(page, encoding="utf-8")


def _summary(report: DriftReport) -> str:
    drifted = ", ".join(report.drifted_features) or "none"
    return (
        f"<p>Reference rows: {report.reference_rows}; current rows: "
        f"{report.current_rows}. Drifted columns: {html.escape(drifted)} "
        f"({report.drift_share:.0%} of tested columns; dataset drift: "
        f"{'yes' if report.dataset_drift else 'no'}).</p>"
    )


def _figure_to_img(figure: object, alt: str) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")  # type: ignore[attr-defined]
    plt.close(figure)  # type: ignore[arg-type]
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def _plot(reference: pl.Series, current: pl.Series, item: FeatureDrift) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 2.6))
    if item.kind == "categorical":
        ref = reference.cast(pl.String).drop_nulls().value_counts(normalize=True)
        cur = current.cast(pl.String).drop_nulls().value_counts(normalize=True)
        ref_shares = dict(ref.iter_rows())
        cur_shares = dict(cur.iter_rows())
        categories = sorted(set(ref_shares) | set(cur_shares))
        x = np.arange(len(categories))
        axis.bar(
            x - 0.2,
            [ref_shares.get(c, 0.0) for c in categories],
            0.4,
            label="reference",
        )
        axis.bar(
            x + 0.2, [cur_shares.get(c, 0.0) for c in categories], 0.4, label="current"
        )
        axis.set_xticks(x, categories, rotation=30, ha="right", fontsize=7)
        axis.set_ylabel("share")
    else:
        ref = reference.cast(pl.Float64).drop_nulls().drop_nans().to_numpy()
        cur = current.cast(pl.Float64).drop_nulls().drop_nans().to_numpy()
        both = np.concatenate([ref, cur])
        # Clip to the 1st-99th percentile so one whale does not squash the plot.
        low, high = np.quantile(both, [0.01, 0.99])
        if high <= low:
            low, high = both.min() - 0.5, both.max() + 0.5
        bins = np.linspace(low, high, 31)
        axis.hist(
            np.clip(ref, low, high),
            bins=bins,
            density=True,
            alpha=0.5,
            label="reference",
        )
        axis.hist(
            np.clip(cur, low, high), bins=bins, density=True, alpha=0.5, label="current"
        )
        axis.set_ylabel("density")
    axis.set_title(f"{item.feature} ({item.status})", fontsize=9)
    axis.legend(fontsize=7)
    return _figure_to_img(figure, f"distribution of {item.feature}")


def _cell(value: object) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _table(report: DriftReport) -> str:
    columns = (
        "feature",
        "kind",
        "status",
        "test",
        "statistic",
        "p_value",
        "distance",
        "psi",
        "reference_mean",
        "current_mean",
        "note",
    )
    head = "".join(f"<th>{name}</th>" for name in columns)
    rows = []
    for item in report.features:
        data = item.to_dict()
        style = ' class="drift"' if item.drifted else ""
        rows.append(
            f"<tr{style}>"
            + "".join(f"<td>{_cell(data[c])}</td>" for c in columns)
            + "</tr>"
        )
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _write_matplotlib(
    reference: pl.DataFrame, current: pl.DataFrame, report: DriftReport, path: Path
) -> None:
    plotted = [f for f in report.features if f.status in ("ok", "warning", "drift")]
    plotted.sort(key=lambda f: (not f.drifted, -(f.psi or 0.0)))
    images = [
        _plot(reference[f.feature], current[f.feature], f) for f in plotted[:MAX_PLOTS]
    ]
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>crmbet drift report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; font-size: 12px; }}
td, th {{ border: 1px solid #ccc; padding: 3px 6px; }}
tr.drift {{ background: #f8d7da; }}
img {{ margin: 4px; }}
</style></head><body>
<h1>Feature drift</h1>
{_summary(report)}
{_table(report)}
<h2>Distributions</h2>
{"".join(images)}
</body></html>
"""
    path.write_text(page, encoding="utf-8")

"""Feature drift between a reference table and a current window.

The reference is normally the feature table the champion was trained on and
the current table a recent window of the same features. Each column gets a
test that fits its type and the population stability index (PSI):

- numeric columns: two-sample Kolmogorov-Smirnov test, Wasserstein distance
  divided by the reference's standard deviation (so it reads in standard
  deviations and does not depend on units), and PSI over reference deciles;
- categorical columns (strings, booleans, segment labels): chi-squared test
  on the category counts, Jensen-Shannon distance (base 2, in [0, 1]) and PSI
  over the categories.

A p-value alone flags everything once samples reach tens of thousands of
players, because tiny, harmless differences become significant. A column
is therefore flagged only when the change is both significant and large
enough to matter:

- numeric: ``PSI >= psi_drift`` or (``KS p < p_value`` and
  ``Wasserstein / std >= wasserstein_drift``);
- categorical: ``PSI >= psi_drift`` or (``chi-squared p < p_value`` and
  ``Jensen-Shannon >= jensen_shannon_drift``).

PSI is read with the usual credit-scoring bands: below 0.1 stable, 0.1 to
0.25 a moderate shift worth watching (status ``warning``), 0.25 and above a
significant shift.

Columns that cannot be tested get a status instead of a number: ``empty``
(no rows on one side), ``all_missing`` (only nulls or NaN on one side),
``constant`` (one value on both sides, the same one), ``missing_column``
(absent on one side). Statistics that do not apply are ``None``, never NaN.

Examples
--------
>>> import numpy as np, polars as pl
>>> rng = np.random.default_rng(0)
>>> reference = pl.DataFrame({"stake": rng.normal(10, 2, 2000)})
>>> current = pl.DataFrame({"stake": rng.normal(13, 2, 2000)})
>>> detect_drift(reference, current).features[0].status
'drift'
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import polars as pl
from scipy import stats
from scipy.spatial.distance import jensenshannon

from crmbet.errors import CrmbetError

logger = logging.getLogger(__name__)

Status = Literal[
    "ok", "warning", "drift", "constant", "empty", "all_missing", "missing_column"
]
Kind = Literal["numeric", "categorical"]

#: Added to every bin share before the PSI logarithm, so a bin that is empty
#: on one side gives a large but finite term instead of infinity.
PSI_EPSILON = 1e-4

#: Columns never tested: identifiers and times differ between any two windows.
DEFAULT_EXCLUDED = ("player_id", "event_id", "session_id", "ts")


class DriftInputError(CrmbetError, ValueError):
    """Raised when the reference or current table cannot be compared."""


@dataclass(frozen=True)
class DriftThresholds:
    """Thresholds of the drift rules (see the module docstring).

    Attributes
    ----------
    p_value:
        Significance level of the KS and chi-squared tests.
    psi_warning:
        PSI from which a column is reported as ``warning``.
    psi_drift:
        PSI from which a column is flagged as drifted whatever the p-value.
    wasserstein_drift:
        Minimum Wasserstein distance, in reference standard deviations, for
        a significant KS test to flag a numeric column.
    jensen_shannon_drift:
        Minimum Jensen-Shannon distance for a significant chi-squared test
        to flag a categorical column.
    dataset_drift_share:
        Share of tested columns that must drift for the whole table to
        count as drifted.
    n_bins:
        Number of quantile bins of the numeric PSI.
    """

    p_value: float = 0.01
    psi_warning: float = 0.1
    psi_drift: float = 0.25
    wasserstein_drift: float = 0.2
    jensen_shannon_drift: float = 0.1
    dataset_drift_share: float = 0.3
    n_bins: int = 10

    def __post_init__(self) -> None:
        if not 0.0 < self.p_value < 1.0:
            raise ValueError(f"p_value={self.p_value} must be in (0, 1)")
        if not 0.0 <= self.psi_warning <= self.psi_drift:
            raise ValueError(
                f"psi_warning={self.psi_warning} and psi_drift={self.psi_drift} must "
                "satisfy 0 <= psi_warning <= psi_drift"
            )
        if self.n_bins < 2:
            raise ValueError(f"n_bins={self.n_bins} must be at least 2")


@dataclass(frozen=True)
class FeatureDrift:
    """Drift statistics of one column; ``None`` where a statistic does not apply."""

    feature: str
    kind: Kind
    status: Status
    drifted: bool
    reference_rows: int
    current_rows: int
    test: str | None = None
    statistic: float | None = None
    p_value: float | None = None
    distance: float | None = None
    psi: float | None = None
    reference_missing_share: float | None = None
    current_missing_share: float | None = None
    reference_mean: float | None = None
    current_mean: float | None = None
    note: str = ""

    def to_dict(self) -> dict[str, object]:
        """Return the statistics as a plain dictionary."""
        return asdict(self)


@dataclass
class DriftReport:
    """Drift of every compared column and the verdict for the whole table."""

    features: list[FeatureDrift]
    thresholds: DriftThresholds
    reference_rows: int
    current_rows: int
    skipped: list[str] = field(default_factory=list)

    @property
    def tested(self) -> list[FeatureDrift]:
        """Columns that could be tested (status ok, warning or drift)."""
        return [f for f in self.features if f.status in ("ok", "warning", "drift")]

    @property
    def drifted_features(self) -> list[str]:
        """Names of the flagged columns."""
        return [f.feature for f in self.features if f.drifted]

    @property
    def drift_share(self) -> float:
        """Share of tested columns that drifted; 0.0 when none could be tested."""
        tested = self.tested
        if not tested:
            return 0.0
        return sum(f.drifted for f in tested) / len(tested)

    @property
    def dataset_drift(self) -> bool:
        """Whether the drifted share reaches ``thresholds.dataset_drift_share``."""
        return (
            bool(self.tested)
            and self.drift_share >= self.thresholds.dataset_drift_share
        )

    def feature(self, name: str) -> FeatureDrift:
        """Return the statistics of one column."""
        for item in self.features:
            if item.feature == name:
                return item
        raise KeyError(
            f"no drift result for column {name!r}; compared: "
            f"{[f.feature for f in self.features]}"
        )

    def to_frame(self) -> pl.DataFrame:
        """Return one row per column, nulls where a statistic does not apply."""
        rows = [item.to_dict() for item in self.features]
        return pl.DataFrame(rows, infer_schema_length=None)

    def to_dict(self) -> dict[str, object]:
        """Return the report as JSON-ready data."""
        return {
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "drift_share": self.drift_share,
            "dataset_drift": self.dataset_drift,
            "drifted_features": self.drifted_features,
            "thresholds": asdict(self.thresholds),
            "skipped": list(self.skipped),
            "features": [item.to_dict() for item in self.features],
        }


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def population_stability_index(
    reference_shares: np.ndarray, current_shares: np.ndarray
) -> float:
    """Return ``sum((c - r) * ln(c / r))`` over bins, both shares smoothed.

    Examples
    --------
    >>> round(population_stability_index(np.array([0.5, 0.5]),
    ...                                  np.array([0.5, 0.5])), 6)
    0.0
    """
    reference = np.asarray(reference_shares, dtype=np.float64) + PSI_EPSILON
    current = np.asarray(current_shares, dtype=np.float64) + PSI_EPSILON
    reference /= reference.sum()
    current /= current.sum()
    return float(np.sum((current - reference) * np.log(current / reference)))


def _numeric_psi(reference: np.ndarray, current: np.ndarray, n_bins: int) -> float:
    """Return the PSI over reference quantile bins; both arrays must be sorted."""
    # Repeated edges (from point masses such as many zeros) collapse into one
    # bin. np.quantile's default linear interpolation gives the same edges.
    edges = np.unique(np.quantile(reference, np.linspace(0.0, 1.0, n_bins + 1)))
    inner = edges[1:-1]
    reference_counts = np.diff(
        np.searchsorted(reference, inner, side="right"),
        prepend=0,
        append=reference.size,
    )
    current_counts = np.diff(
        np.searchsorted(current, inner, side="right"), prepend=0, append=current.size
    )
    return population_stability_index(
        reference_counts / reference.size, current_counts / current.size
    )


#: Above this many rows on either side the KS p-value uses the asymptotic
#: distribution, the same switch as SciPy's ``ks_2samp(method="auto")``.
KS_EXACT_MAX_ROWS = 10_000


def ks_wasserstein(
    reference: np.ndarray, current: np.ndarray
) -> tuple[float, float, float]:
    """Return the KS statistic, its p-value and the Wasserstein-1 distance.

    Both arrays must be sorted. One merge of the two samples gives both
    empirical CDFs, so the two statistics cost one pass instead of SciPy's
    separate sorts; the results equal ``scipy.stats.ks_2samp`` and
    ``scipy.stats.wasserstein_distance``.
    """
    n, m = reference.size, current.size
    merged = np.sort(np.concatenate([reference, current]), kind="stable")
    gap = np.abs(
        np.searchsorted(reference, merged, side="right") / n
        - np.searchsorted(current, merged, side="right") / m
    )
    statistic = float(gap.max())
    wasserstein = float(np.dot(gap[:-1], np.diff(merged)))
    if max(n, m) <= KS_EXACT_MAX_ROWS:
        p_value = float(stats.ks_2samp(reference, current).pvalue)
    else:
        p_value = float(stats.kstwo.sf(statistic, np.round(n * m / (n + m))))
    return statistic, min(max(p_value, 0.0), 1.0), wasserstein


def _is_categorical(dtype: pl.DataType) -> bool:
    return dtype in (pl.String, pl.Categorical, pl.Boolean) or isinstance(
        dtype, pl.Enum | pl.Categorical
    )


def _clean_numeric(series: pl.Series) -> np.ndarray:
    values = series.cast(pl.Float64).drop_nulls().to_numpy()
    return np.sort(values[np.isfinite(values)])


def _missing_share(series: pl.Series, kept: int) -> float | None:
    if series.len() == 0:
        return None
    return 1.0 - kept / series.len()


def _untestable(
    name: str,
    kind: Kind,
    reference: pl.Series,
    current: pl.Series,
    reference_kept: int,
    current_kept: int,
    distinct: tuple[set, set],
) -> FeatureDrift | None:
    """Return a status-only result when a column cannot be tested, else None."""
    common = {
        "feature": name,
        "kind": kind,
        "reference_rows": reference.len(),
        "current_rows": current.len(),
        "reference_missing_share": _missing_share(reference, reference_kept),
        "current_missing_share": _missing_share(current, current_kept),
    }
    if reference.len() == 0 or current.len() == 0:
        side = "reference" if reference.len() == 0 else "current"
        return FeatureDrift(
            status="empty",
            drifted=False,
            note=f"the {side} table has no rows",
            **common,
        )
    if reference_kept == 0 or current_kept == 0:
        side = "reference" if reference_kept == 0 else "current"
        return FeatureDrift(
            status="all_missing",
            drifted=False,
            note=f"every {side} value is null or NaN",
            **common,
        )
    reference_values, current_values = distinct
    if len(reference_values) == 1 and reference_values == current_values:
        value = next(iter(reference_values))
        mean = float(value) if kind == "numeric" else None
        return FeatureDrift(
            status="constant",
            drifted=False,
            reference_mean=mean,
            current_mean=mean,
            note=f"one value on both sides: {value!r}",
            **common,
        )
    return None


def _status(drifted: bool, psi: float | None, thresholds: DriftThresholds) -> Status:
    if drifted:
        return "drift"
    if psi is not None and psi >= thresholds.psi_warning:
        return "warning"
    return "ok"


def _numeric_drift(
    name: str, reference: pl.Series, current: pl.Series, thresholds: DriftThresholds
) -> FeatureDrift:
    ref = _clean_numeric(reference)
    cur = _clean_numeric(current)
    # Sorted arrays: the first and last values show whether a side is constant.
    distinct = (
        set(ref[[0, -1]].tolist()) if ref.size else set(),
        set(cur[[0, -1]].tolist()) if cur.size else set(),
    )
    untestable = _untestable(
        name, "numeric", reference, current, ref.size, cur.size, distinct
    )
    if untestable is not None:
        return untestable

    statistic, p_value, wasserstein = ks_wasserstein(ref, cur)
    scale = float(np.std(ref))
    if scale == 0.0:
        # A constant reference has no spread to measure distance in, so the
        # current spread is used. Both constant was already reported as such.
        scale = float(np.std(cur)) or 1.0
    distance = wasserstein / scale
    psi = _numeric_psi(ref, cur, thresholds.n_bins)
    drifted = psi >= thresholds.psi_drift or (
        p_value < thresholds.p_value and distance >= thresholds.wasserstein_drift
    )
    return FeatureDrift(
        feature=name,
        kind="numeric",
        status=_status(drifted, psi, thresholds),
        drifted=bool(drifted),
        reference_rows=reference.len(),
        current_rows=current.len(),
        test="kolmogorov_smirnov",
        statistic=_finite(statistic),
        p_value=_finite(p_value),
        distance=_finite(distance),
        psi=_finite(psi),
        reference_missing_share=_missing_share(reference, ref.size),
        current_missing_share=_missing_share(current, cur.size),
        reference_mean=_finite(ref.mean()),
        current_mean=_finite(cur.mean()),
        note="distance = Wasserstein / reference standard deviation",
    )


def _categorical_drift(
    name: str, reference: pl.Series, current: pl.Series, thresholds: DriftThresholds
) -> FeatureDrift:
    ref = reference.cast(pl.String).drop_nulls()
    cur = current.cast(pl.String).drop_nulls()
    ref_counts = dict(ref.value_counts().iter_rows())
    cur_counts = dict(cur.value_counts().iter_rows())
    untestable = _untestable(
        name,
        "categorical",
        reference,
        current,
        ref.len(),
        cur.len(),
        (set(ref_counts), set(cur_counts)),
    )
    if untestable is not None:
        return untestable

    categories = sorted(set(ref_counts) | set(cur_counts))
    table = np.array(
        [
            [ref_counts.get(c, 0) for c in categories],
            [cur_counts.get(c, 0) for c in categories],
        ],
        dtype=np.float64,
    )
    ref_shares = table[0] / table[0].sum()
    cur_shares = table[1] / table[1].sum()
    if len(categories) > 1:
        chi2 = stats.chi2_contingency(table)
        statistic, p_value = float(chi2.statistic), float(chi2.pvalue)
    else:
        statistic, p_value = 0.0, 1.0
    distance = float(jensenshannon(ref_shares, cur_shares, base=2))
    psi = population_stability_index(ref_shares, cur_shares)
    drifted = psi >= thresholds.psi_drift or (
        p_value < thresholds.p_value and distance >= thresholds.jensen_shannon_drift
    )
    return FeatureDrift(
        feature=name,
        kind="categorical",
        status=_status(drifted, psi, thresholds),
        drifted=bool(drifted),
        reference_rows=reference.len(),
        current_rows=current.len(),
        test="chi_squared",
        statistic=_finite(statistic),
        p_value=_finite(p_value),
        distance=_finite(distance),
        psi=_finite(psi),
        reference_missing_share=_missing_share(reference, ref.len()),
        current_missing_share=_missing_share(current, cur.len()),
        note="distance = Jensen-Shannon (base 2)",
    )


def _missing_column(
    name: str, reference: pl.DataFrame, current: pl.DataFrame
) -> FeatureDrift:
    side = "reference" if name not in reference.columns else "current"
    kind: Kind = "numeric"
    present = current if side == "reference" else reference
    if _is_categorical(present.schema[name]):
        kind = "categorical"
    return FeatureDrift(
        feature=name,
        kind=kind,
        status="missing_column",
        drifted=False,
        reference_rows=reference.height,
        current_rows=current.height,
        note=f"the column is absent from the {side} table",
    )


def feature_drift(
    name: str,
    reference: pl.Series,
    current: pl.Series,
    thresholds: DriftThresholds | None = None,
) -> FeatureDrift:
    """Compare one column of the reference with the same column of the window."""
    thresholds = thresholds or DriftThresholds()
    if _is_categorical(reference.dtype) or _is_categorical(current.dtype):
        return _categorical_drift(name, reference, current, thresholds)
    if not (reference.dtype.is_numeric() or reference.dtype == pl.Null) or not (
        current.dtype.is_numeric() or current.dtype == pl.Null
    ):
        raise DriftInputError(
            f"column {name!r} has types {reference.dtype} (reference) and "
            f"{current.dtype} (current); drift is computed on numeric, string, "
            "categorical or boolean columns, so cast it or exclude it"
        )
    return _numeric_drift(name, reference, current, thresholds)


def _testable_type(dtype: pl.DataType) -> bool:
    return dtype.is_numeric() or dtype == pl.Null or _is_categorical(dtype)


def detect_drift(
    reference: pl.DataFrame,
    current: pl.DataFrame,
    *,
    columns: Sequence[str] | None = None,
    thresholds: DriftThresholds | None = None,
    exclude: Sequence[str] = DEFAULT_EXCLUDED,
) -> DriftReport:
    """Compare every shared column of two tables and return the drift report.

    Parameters
    ----------
    reference:
        The baseline, usually the champion's training features.
    current:
        The window to check, with the same columns.
    columns:
        Columns to compare; by default every column of either table except
        ``exclude`` and columns of types that have no drift test (dates,
        lists), which are listed in ``DriftReport.skipped``.
    thresholds:
        Rule thresholds; :class:`DriftThresholds` defaults when omitted.
    exclude:
        Columns never compared when ``columns`` is not given.
    """
    thresholds = thresholds or DriftThresholds()
    skipped: list[str] = []
    if columns is None:
        names = list(dict.fromkeys([*reference.columns, *current.columns]))
        names = [name for name in names if name not in exclude]
        kept = []
        for name in names:
            dtypes = [
                frame.schema[name]
                for frame in (reference, current)
                if name in frame.columns
            ]
            if all(_testable_type(dtype) for dtype in dtypes):
                kept.append(name)
            else:
                skipped.append(name)
        names = kept
    else:
        names = list(columns)
        unknown = [
            n for n in names if n not in reference.columns and n not in current.columns
        ]
        if unknown:
            raise DriftInputError(
                f"columns {unknown} are in neither table; available: "
                f"{sorted(set(reference.columns) | set(current.columns))}"
            )

    results = []
    for name in names:
        if name not in reference.columns or name not in current.columns:
            results.append(_missing_column(name, reference, current))
            continue
        results.append(feature_drift(name, reference[name], current[name], thresholds))
    report = DriftReport(
        features=results,
        thresholds=thresholds,
        reference_rows=reference.height,
        current_rows=current.height,
        skipped=skipped,
    )
    logger.info(
        "drift: %d of %d tested columns drifted (%s)",
        len(report.drifted_features),
        len(report.tested),
        ", ".join(report.drifted_features) or "none",
    )
    return report

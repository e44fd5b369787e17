"""Drift detection speed: crmbet's per-feature tests against Evidently's preset.

Both compare the same reference and current tables of synthetic player
features (lognormal, gamma and beta columns plus one categorical segment
column, one column shifted). Evidently computes its DataDriftPreset
without writing HTML; its import time is measured separately because the
CLI pays it once per report. Also measures one canary guard evaluation.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import polars as pl


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=200_000, help="rows per table")
    parser.add_argument("--features", type=int, default=30, help="numeric columns")
    parser.add_argument(
        "--repeat", type=int, default=3, help="timed repetitions (best kept)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="20,000 rows, 1 repetition"
    )
    parser.add_argument("--no-peer", action="store_true", help="skip Evidently")


def _tables(
    rows: int, features: int, seed: int = 0
) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(seed)

    def table(shift: float) -> dict[str, object]:
        columns: dict[str, object] = {}
        for i in range(features):
            kind = i % 3
            if kind == 0:
                values = rng.lognormal(2.0 + (shift if i == 0 else 0.0), 1.0, rows)
            elif kind == 1:
                values = rng.gamma(2.0, 3.0, rows)
            else:
                values = rng.beta(2.0, 5.0, rows)
            columns[f"feature_{i:02d}"] = values
        columns["segment"] = rng.choice(
            ["a", "b", "c", "d"], rows, p=[0.4, 0.3, 0.2, 0.1]
        )
        return columns

    return pl.DataFrame(table(0.0)), pl.DataFrame(table(0.3))


def _best(function, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def _canary_ms(repeat: int) -> float:
    from crmbet.monitoring.canary_guard import CanaryGuard, VariantStats

    rng = np.random.default_rng(0)
    stats = {
        name: VariantStats(
            requests=100_000,
            errors=100,
            latencies_ms=rng.gamma(2, 2, 5000),
            segment_counts={f"s{i}": 1000 * (i + 1) for i in range(8)},
            rg_flagged=500,
            model_version=version,
        )
        for name, version in (("champion", "1"), ("challenger", "2"))
    }

    class Source:
        def variant_stats(self) -> dict[str, VariantStats]:
            return stats

    guard = CanaryGuard(Source(), lambda decision: None)
    return _best(guard.evaluate, max(repeat, 20)) * 1000.0


def run(args: argparse.Namespace) -> list[dict[str, object]]:
    from crmbet.monitoring.drift import detect_drift

    rows = 20_000 if args.quick else args.rows
    repeat = 1 if args.quick else args.repeat
    reference, current = _tables(rows, args.features)
    size = f"{rows:,} rows x {args.features + 1} columns per table"
    ours = _best(lambda: detect_drift(reference, current), repeat)
    flagged = detect_drift(reference, current).drifted_features
    records: list[dict[str, object]] = []
    peer_name, peer_value = None, None
    if not args.no_peer:
        import warnings

        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from evidently import Report
            from evidently.presets import DataDriftPreset
        records.append(
            {
                "benchmark": "drift",
                "metric": "evidently_import_s",
                "value": time.perf_counter() - start,
                "unit": "s",
                "peer": None,
                "peer_value": None,
                "size": size,
            }
        )
        reference_pd, current_pd = reference.to_pandas(), current.to_pandas()

        def evidently() -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                Report([DataDriftPreset()]).run(
                    current_data=current_pd, reference_data=reference_pd
                )

        peer_name, peer_value = (
            "evidently 0.7.23 DataDriftPreset",
            _best(evidently, repeat),
        )
    records.append(
        {
            "benchmark": "drift",
            "metric": "detect_drift_s",
            "value": ours,
            "unit": "s",
            "peer": peer_name,
            "peer_value": peer_value,
            "size": size,
            "flagged": flagged,
        }
    )
    records.append(
        {
            "benchmark": "drift",
            "metric": "canary_guard_evaluate_ms",
            "value": _canary_ms(repeat),
            "unit": "ms",
            "peer": None,
            "peer_value": None,
            "size": "2 variants, 5,000 latency samples each",
        }
    )
    return records

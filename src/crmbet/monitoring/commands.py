"""Lifecycle commands: ``crmbet drift``, ``crmbet retrain`` and ``crmbet ab``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import polars as pl
import typer
from rich.console import Console
from rich.table import Table

from crmbet.config import get_settings
from crmbet.errors import CrmbetError

if TYPE_CHECKING:
    # Imported for hints only: the CLI starts without loading SciPy.
    from crmbet.monitoring.drift import DriftReport
    from crmbet.monitoring.retrain import ModelComparison

logger = logging.getLogger(__name__)
console = Console()

InputKind = Literal["auto", "features", "events"]

#: A table counts as features, not events, when it has this many registered
#: feature columns; events have none.
MIN_FEATURE_COLUMNS = 3


def _read_table(path: Path) -> pl.DataFrame | None:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pl.read_parquet(path)
    if suffix == ".csv":
        return pl.read_csv(path, infer_schema_length=10_000)
    return None


def load_features(
    path: str | Path, kind: InputKind = "auto", source_format: str = "auto"
) -> pl.DataFrame:
    """Read a feature table, or read events and compute their features.

    ``kind="auto"`` treats a Parquet or CSV file with registered feature
    columns as features. Anything else goes through the event adapters
    (validation, pseudonymisation), the fold into player states and
    :func:`~crmbet.features.definitions.compute_features`, read at the time
    of the newest event.
    """
    from crmbet.features.definitions import FEATURES

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist; pass a features or events file"
        )
    if kind in ("auto", "features"):
        table = _read_table(path) if path.is_file() else None
        known = [c for c in table.columns if c in FEATURES] if table is not None else []
        if len(known) >= MIN_FEATURE_COLUMNS:
            return table
        if kind == "features":
            raise CrmbetError(
                f"{path} has {len(known)} registered feature columns; pass a "
                "Parquet or "
                "CSV feature table, or --kind events for transactions"
            )
    from crmbet.features.definitions import compute_features
    from crmbet.features.state import fold
    from crmbet.training import read_source

    events = read_source(
        path, settings=get_settings(), source_format=source_format
    ).events  # type: ignore[arg-type]
    return compute_features(fold(events))


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def drift_table(report: DriftReport) -> Table:
    """Build the Rich table of a drift report."""
    table = Table(
        title=f"Drift: {len(report.drifted_features)} of {len(report.tested)} "
        f"tested columns drifted"
    )
    for column in (
        "feature",
        "kind",
        "status",
        "p-value",
        "distance",
        "PSI",
        "reference mean",
        "current mean",
    ):
        table.add_column(column, overflow="fold")
    colours = {"drift": "red", "warning": "yellow", "ok": "green"}
    for item in report.features:
        colour = colours.get(item.status, "dim")
        table.add_row(
            item.feature,
            item.kind,
            f"[{colour}]{item.status}[/{colour}]",
            _number(item.p_value),
            _number(item.distance),
            _number(item.psi),
            _number(item.reference_mean),
            _number(item.current_mean),
        )
    return table


def drift(
    reference: Annotated[
        str,
        typer.Option(
            help="Reference features or events file, or 'champion' for the "
            "features the "
            "champion was trained on (stored by 'crmbet retrain')."
        ),
    ],
    current: Annotated[
        Path, typer.Option(help="Current window: features or events file.")
    ],
    kind: Annotated[str, typer.Option(help="auto, features or events.")] = "auto",
    format: Annotated[
        str,
        typer.Option(
            help="Event source format when reading events: auto, csv, parquet, "
            "jsonl or "
            "bustabit."
        ),
    ] = "auto",
    report: Annotated[Path, typer.Option(help="HTML report to write.")] = Path(
        "drift-report.html"
    ),
    no_report: Annotated[
        bool,
        typer.Option(
            "--no-report", help="Print the table only, without the HTML report."
        ),
    ] = False,
    columns: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated columns to compare; every shared column by default."
        ),
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            help="HTML engine: auto (Evidently, else matplotlib), evidently or "
            "matplotlib."
        ),
    ] = "auto",
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="Also write the statistics as JSON here."),
    ] = None,
    p_value: Annotated[
        float, typer.Option(help="Significance level of the tests.")
    ] = 0.01,
    psi_drift: Annotated[
        float, typer.Option(help="PSI from which a column drifts whatever the p-value.")
    ] = 0.25,
    fail_on_drift: Annotated[
        bool, typer.Option(help="Exit with status 1 when any column drifted.")
    ] = False,
) -> None:
    """Compare a current window of features with a reference and report drift."""
    from crmbet.monitoring.drift import DriftThresholds, detect_drift

    if kind not in ("auto", "features", "events"):
        raise typer.BadParameter(
            f"--kind {kind!r} is invalid; pass auto, features or events"
        )
    if reference in ("champion", "challenger") or reference.isdigit():
        from crmbet.models.registry import ModelRegistry
        from crmbet.monitoring.retrain import load_reference_features

        reference_table = load_reference_features(
            ModelRegistry(get_settings()), reference
        )
    else:
        reference_table = load_features(reference, kind, format)  # type: ignore[arg-type]
    current_table = load_features(current, kind, format)  # type: ignore[arg-type]
    thresholds = DriftThresholds(
        p_value=p_value, psi_drift=psi_drift, psi_warning=min(0.1, psi_drift)
    )
    selected = [name.strip() for name in columns.split(",")] if columns else None
    result = detect_drift(
        reference_table, current_table, thresholds=thresholds, columns=selected
    )
    console.print(drift_table(result))
    if not no_report:
        from crmbet.monitoring.drift_report import write_drift_report

        used = write_drift_report(
            reference_table, current_table, result, report, engine=engine
        )  # type: ignore[arg-type]
        console.print(f"wrote the {used} report to {report}")
    if json_out is not None:
        json_out.write_text(json.dumps(result.to_dict(), indent=2))
    if fail_on_drift and result.drifted_features:
        raise typer.Exit(1)


def retrain(
    input: Annotated[
        Path, typer.Option("--input", "-i", help="Transactions of the new window.")
    ],
    format: Annotated[
        str, typer.Option(help="auto, csv, parquet, jsonl or bustabit.")
    ] = "auto",
    mapping: Annotated[
        str | None,
        typer.Option(help="JSON mapping of canonical fields to source columns."),
    ] = None,
    k: Annotated[
        str, typer.Option(help="'auto' or a fixed number of segments.")
    ] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of every random step.")] = 0,
    promote: Annotated[
        bool,
        typer.Option(
            "--promote", help="Promote the challenger regardless of the promotion rule."
        ),
    ] = False,
    register_only: Annotated[
        bool,
        typer.Option(
            "--register-only", help="Never promote; leave the challenger for a canary."
        ),
    ] = False,
) -> None:
    """Train a challenger, compare it with the champion and promote it by the rule."""
    from crmbet.monitoring import retrain as lifecycle
    from crmbet.training import read_source

    if promote and register_only:
        raise typer.BadParameter("--promote and --register-only exclude each other")
    if k != "auto" and (not k.isdigit() or int(k) < 1):
        raise typer.BadParameter(
            f"--k {k!r} is invalid; pass 'auto' or a positive integer"
        )
    mode: lifecycle.PromoteMode = "rule"
    if promote:
        mode = "always"
    elif register_only:
        mode = "never"
    settings = get_settings()
    from crmbet.cli import parse_mapping

    events = read_source(
        input,
        settings=settings,
        source_format=format,  # type: ignore[arg-type]
        mapping=parse_mapping(mapping),
    ).events
    with console.status("training the challenger"):
        result = lifecycle.retrain(
            events,
            settings=settings,
            k=None if k == "auto" else int(k),
            seed=seed,
            promote=mode,
        )
    console.print(comparison_table(result.comparison, result.version))
    verdict = (
        "[green]promoted to champion[/green]"
        if result.promoted
        else ("[yellow]registered as challenger[/yellow]")
    )
    console.print(f"version {result.version}: {verdict} ({result.reason})")


def comparison_table(comparison: ModelComparison, version: str | None) -> Table:
    """Build the Rich table of a champion/challenger comparison."""
    table = Table(
        title=f"Challenger {version} vs champion "
        f"{comparison.champion_version or '(none)'} on "
        f"{comparison.n_players:,} players"
    )
    table.add_column("measure")
    table.add_column("champion")
    table.add_column("challenger")
    for name in ("k", "silhouette", "davies_bouldin", "calinski_harabasz"):
        table.add_row(
            name,
            _number(getattr(comparison, f"champion_{name}")),
            _number(getattr(comparison, f"challenger_{name}")),
        )
    table.add_row("adjusted Rand index", "", _number(comparison.adjusted_rand_index))
    table.add_row(
        "players changing segment", "", _number(comparison.segment_change_share)
    )
    table.add_row(
        "champion segment mix PSI", _number(comparison.champion_segment_mix_psi), ""
    )
    return table


def ab(
    outcomes: Annotated[
        Path,
        typer.Option(
            help="CSV, Parquet or JSON-lines file with columns variant, player_id "
            "and converted."
        ),
    ],
    control: Annotated[str, typer.Option(help="Control variant.")] = "champion",
    treatment: Annotated[str, typer.Option(help="Treatment variant.")] = "challenger",
    baseline_rate: Annotated[
        float,
        typer.Option(
            help="Expected conversion rate of the control, for the sample size."
        ),
    ] = 0.10,
    minimum_detectable_effect: Annotated[
        float,
        typer.Option(
            "--mde", help="Smallest absolute difference in conversion rate to detect."
        ),
    ] = 0.02,
    alpha: Annotated[float, typer.Option(help="Significance level.")] = 0.05,
    power: Annotated[float, typer.Option(help="Power of the test.")] = 0.8,
) -> None:
    """Test whether the treatment variant converts better than the control."""
    from crmbet.monitoring.ab_eval import ABEvaluator

    suffix = outcomes.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        frame = pl.read_ndjson(outcomes)
    else:
        frame = _read_table(outcomes)
        if frame is None:
            raise typer.BadParameter(
                f"{outcomes} has an unknown extension; use .csv, .parquet or .jsonl"
            )
    evaluator = ABEvaluator(
        baseline_rate=baseline_rate,
        minimum_detectable_effect=minimum_detectable_effect,
        alpha=alpha,
        power=power,
    )
    evaluator.record_frame(frame)
    result = evaluator.evaluate(control, treatment)
    table = Table(title=f"A/B: {treatment} vs {control}")
    for column in ("variant", "players", "conversions", "rate"):
        table.add_column(column)
    table.add_row(
        control,
        f"{result.control_players:,}",
        f"{result.control_conversions:,}",
        f"{result.control_rate:.2%}",
    )
    table.add_row(
        treatment,
        f"{result.treatment_players:,}",
        f"{result.treatment_conversions:,}",
        f"{result.treatment_rate:.2%}",
    )
    console.print(table)
    console.print(
        f"difference {result.difference:+.2%}, z={result.z:.3f}, "
        f"p={result.p_value:.4g}; minimum sample size "
        f"{result.minimum_sample_size:,} per variant; verdict: {result.verdict}"
    )


def register(app: typer.Typer) -> None:
    """Add the lifecycle commands to the ``crmbet`` application."""
    app.command()(drift)
    app.command()(retrain)
    app.command()(ab)

"""The ``crmbet`` command.

Human output goes through Rich (tables, progress bars); logs go to stderr.
Commands of the serving, streaming, monitoring and scale-out layers live in
their own modules and register themselves through ``register(app)``.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from crmbet.config import InsecureKeyWarning, get_settings

app = typer.Typer(
    name="crmbet",
    help="Player segments, risk scores and campaign recommendations for betting CRM.",
    no_args_is_help=True,
    add_completion=False,
)
features_app = typer.Typer(
    help="Inspect registered features and their lineage.", no_args_is_help=True
)
app.add_typer(features_app, name="features")
console = Console()
logger = logging.getLogger("crmbet.cli")

#: Modules that add commands of their own; missing ones are skipped.
COMMAND_MODULES = (
    "crmbet.serving.commands",
    "crmbet.streaming.commands",
    "crmbet.monitoring.commands",
    "crmbet.features.commands",
    "crmbet.scale.commands",
)

TRAIN_STEPS = ("read", "fold", "features", "select-k", "fit", "onnx", "register")


@app.callback()
def _configure(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log at DEBUG level.")
    ] = False,
) -> None:
    level = (
        logging.DEBUG
        if verbose
        else getattr(logging, get_settings().log_level, logging.INFO)
    )
    logging.basicConfig(
        level=level,
        format="%(name)s: %(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
        force=True,
    )
    for noisy in ("mlflow", "alembic", "urllib3", "matplotlib", "skl2onnx", "numba"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _log_key_warning()


def _log_key_warning() -> None:
    """Log the development-key warning once, like any other message.

    Python would print it with a line of crmbet's source; other warnings
    keep the handler that was in place.
    """
    previous = warnings.showwarning
    if getattr(previous, "crmbet_logs_key_warning", False):
        return
    # Counted here rather than with a "once" filter, because libraries
    # (MLflow among them) swap the warning filters while they run.
    logged = False

    def show(  # noqa: PLR0913 - the signature warnings.showwarning calls
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        nonlocal logged
        if issubclass(category, InsecureKeyWarning):
            if not logged:
                logging.getLogger("crmbet.config").warning("%s", message)
                logged = True
            return
        previous(message, category, filename, lineno, file, line)

    show.crmbet_logs_key_warning = True  # type: ignore[attr-defined]
    warnings.showwarning = show


@contextmanager
def training_progress(k_steps: int) -> Iterator[Any]:
    """Show one progress bar over the training steps; yield the callback."""
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("reading events", total=len(TRAIN_STEPS) - 1 + k_steps)

        def advance(step: str, amount: int) -> None:
            progress.update(task, advance=amount, description=f"training: {step}")

        yield advance
        progress.update(
            task, completed=progress.tasks[0].total, description="training: done"
        )


def _json_object(text: str, option: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise typer.BadParameter(
            f"{option} is not valid JSON ({error}); pass an object "
            'such as \'{"player_id": "customer"}\''
        ) from error
    if not isinstance(value, dict):
        raise typer.BadParameter(f"{option} must be a JSON object, got {text!r}")
    return value


#: Help of every command's ``--mapping`` option.
MAPPING_HELP = (
    "JSON mapping of canonical fields to the source's columns, e.g. "
    '\'{"player_id": "customer"}\', or an object with the parts "columns", '
    '"constants" and "event_type_values" (the source\'s event-type labels).'
)


def parse_mapping(text: str | None) -> Any:
    """Return the :class:`ColumnMapping` of a ``--mapping`` value, or None."""
    from crmbet.events import ColumnMapping

    if not text:
        return None
    try:
        return ColumnMapping.from_json(text)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error


def _parse_k(value: str) -> int | None:
    if value == "auto":
        return None
    if not value.isdigit() or int(value) < 2:
        raise typer.BadParameter(
            f"--k {value!r} is invalid; pass 'auto' or an integer of at least 2"
        )
    return int(value)


def _number(value: float) -> str:
    """Format a statistic for a table: thousands separators, no exponents."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def segment_table(model: Any, title: str = "Segments") -> Table:
    """Build the Rich table of segments: size, name, key statistics, campaigns."""
    table = Table(title=title, show_lines=True)
    for column in (
        "id",
        "segment",
        "players",
        "share",
        "key statistics (medians)",
        "campaigns",
    ):
        table.add_column(column, overflow="fold")
    for profile in model.profiles:
        stats = "\n".join(
            f"{k}={_number(v)}" for k, v in profile.key_statistics().items()
        )
        campaigns = "\n".join(
            f"{c.title}{' (promotion)' if c.promotion else ''}"
            for c in profile.campaigns
        )
        table.add_row(
            str(profile.cluster_id),
            profile.name,
            f"{profile.size:,}",
            f"{profile.share:.1%}",
            stats,
            campaigns,
        )
    return table


@app.command()
def generate(
    out: Annotated[Path, typer.Option(help="Parquet file to write.")] = Path(
        "synthetic.parquet"
    ),
    players: Annotated[int, typer.Option(min=1, help="Number of players.")] = 50_000,
    days: Annotated[int, typer.Option(min=1, help="Days of activity.")] = 30,
    seed: Annotated[
        int, typer.Option(help="Random seed; the same seed gives the same file.")
    ] = 0,
) -> None:
    """Write synthetic operator transactions with a ground-truth archetype column."""
    from crmbet.events.synthetic import write_synthetic

    start = time.perf_counter()
    rows = write_synthetic(
        out, players=players, days=days, seed=seed, show_progress=True
    )
    console.print(
        f"wrote {rows:,} transactions for {players:,} players to {out} "
        f"in {time.perf_counter() - start:.1f} s"
    )


@app.command()
def train(
    input: Annotated[
        Path, typer.Option("--input", "-i", help="Transactions file or folder.")
    ],
    format: Annotated[
        str, typer.Option(help="auto, csv, parquet, jsonl or bustabit.")
    ] = "auto",
    k: Annotated[
        str, typer.Option(help="'auto' or a fixed number of segments.")
    ] = "auto",
    k_min: Annotated[
        int, typer.Option(min=2, help="Smallest k tried by --k auto.")
    ] = 3,
    k_max: Annotated[
        int, typer.Option(min=2, help="Largest k tried by --k auto.")
    ] = 12,
    seed: Annotated[int, typer.Option(help="Seed of every random step.")] = 0,
    mapping: Annotated[str | None, typer.Option(help=MAPPING_HELP)] = None,
    report: Annotated[
        Path | None, typer.Option(help="Also write the HTML report here.")
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            help="'local' (Polars in this process) or 'dask' "
            "(see 'crmbet scale train')."
        ),
    ] = "local",
    scheduler: Annotated[
        str | None,
        typer.Option(help="Dask scheduler address; a LocalCluster when unset."),
    ] = None,
    promote: Annotated[
        bool,
        typer.Option(help="Make the new version the champion that predictions use."),
    ] = False,
) -> None:
    """Train a segmentation model on transactions and register it."""
    from crmbet.training import run_training

    fixed_k = _parse_k(k)
    if k_min > k_max:
        raise typer.BadParameter(f"--k-min {k_min} is above --k-max {k_max}; swap them")
    column_mapping = parse_mapping(mapping)
    settings = get_settings()
    if engine not in ("local", "dask"):
        raise typer.BadParameter(f"--engine {engine!r} is invalid; pass local or dask")
    if engine == "dask":
        from crmbet.pipeline import ClusterConfig
        from crmbet.scale.job import run_scale_training

        config = ClusterConfig(
            engine="dask",
            scheduler_address=scheduler,
            k=fixed_k,
            k_min=k_min,
            k_max=k_max,
            seed=seed,
        )
        result = run_scale_training(
            input,
            config,
            settings=settings,
            source_format=format,
            mapping=column_mapping,
        )
    else:
        with training_progress(0 if fixed_k else k_max - k_min + 1) as advance:
            result = run_training(
                input,
                settings=settings,
                source_format=format,  # type: ignore[arg-type]
                mapping=column_mapping,
                k=fixed_k,
                k_range=(k_min, k_max),
                seed=seed,
                progress=advance,
            )
    _save_online_snapshot(result)
    _print_training(result)
    _report_champion(result.version, promote)
    if report:
        from crmbet.reporting import write_report

        console.print(f"report: {write_report(result.model, report)}")


def _report_champion(version: str | None, promote: bool) -> None:
    from crmbet.models.registry import CHAMPION, ModelRegistry

    if version is None:
        return
    registry = ModelRegistry(get_settings())
    if promote:
        registry.set_alias(CHAMPION, version)
    champion = registry.alias_version(CHAMPION)
    if champion == version:
        console.print(f"version {version} is the champion: predictions now use it")
    else:
        console.print(
            f"version {version} registered; predictions still use the champion, "
            "version "
            f"{champion}. Promote it with 'crmbet train --promote', 'crmbet models "
            "promote' or 'crmbet retrain'."
        )


def _save_online_snapshot(result: Any) -> None:
    """Merge the trained players' states into the embedded store's snapshot.

    Players of earlier runs stay; a player in both gets the new state.
    """
    from crmbet.features.online import MemoryOnlineStore

    path = get_settings().home / "online_store.parquet"
    store = (
        MemoryOnlineStore.from_snapshot(path) if path.exists() else MemoryOnlineStore()
    )
    store.put_states(result.states)
    store.snapshot(path)


def _print_training(result: Any) -> None:
    model = result.model
    console.print(
        segment_table(
            model, title=f"{model.n_segments} segments, model version {result.version}"
        )
    )
    from crmbet.training import TrainingResult

    # The fold counts each delivered event once; the difference is the
    # repeated deliveries (same id, player and time) it dropped. The scale-out
    # job keeps its states on disk, so it is not counted there.
    repeated = 0
    if isinstance(result, TrainingResult) and result.states.height:
        repeated = result.n_events - int(result.states["n_events"].sum())
    events = f"{result.n_events:,}" + (
        f" ({repeated:,} repeated deliveries counted once)" if repeated > 0 else ""
    )
    console.print(
        f"players={int(model.metrics['n_players']):,} events={events} "
        f"dead letters={result.n_dead_letters:,} "
        f"silhouette={model.metrics['silhouette']:.3f} "
        f"onnx label mismatches={result.onnx_mismatches}"
    )
    if result.adjusted_rand_index is not None:
        console.print(
            f"adjusted Rand index against the archetype column: "
            f"{result.adjusted_rand_index:.3f}"
        )
    timing = ", ".join(
        f"{k}={v:.2f}" for k, v in result.timings.items() if k.endswith("_s")
    )
    console.print(f"timings (s): {timing}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where to write the HTML report.")] = Path(
        ".crmbet/report.html"
    ),
    seed: Annotated[int, typer.Option(help="Seed of every random step.")] = 0,
) -> None:
    """Run the main job on the bundled real bustabit bets, end to end."""
    from crmbet.events.adapters import bundled_bustabit_path
    from crmbet.reporting import write_report
    from crmbet.serving.predictor import SegmentPredictor
    from crmbet.training import run_training

    settings = get_settings()
    source = bundled_bustabit_path()
    console.rule("crmbet demo: 50,000 real bustabit bets")
    with training_progress(10) as advance:
        result = run_training(source, settings=settings, seed=seed, progress=advance)
    _save_online_snapshot(result)
    predictor = SegmentPredictor(result.model)
    batch = predictor.predict_batch(result.features)
    flagged = int(batch.risk.harm_flag.sum())
    console.print(
        f"predicted {len(batch):,} players in {batch.latency_ms:.1f} ms; "
        f"{flagged:,} flagged by responsible-gambling markers get no promotions"
    )
    _print_training(result)
    _demo_stream(settings, source, predictor)
    console.print(f"report: {write_report(result.model, out)}")


def _demo_stream(settings: Any, source: Path, predictor: Any) -> None:
    """Replay the bets through the stream consumer and show segment changes."""
    import shutil

    from crmbet.streaming import StreamConfig, StreamingMLPipeline
    from crmbet.streaming.sinks import LocalSink

    console.rule("the same bets replayed as a stream")
    shutil.rmtree(settings.home / "stream", ignore_errors=True)
    sink = LocalSink(settings.home / "stream")
    pipeline = StreamingMLPipeline(
        StreamConfig(max_batch_size=5_000),
        settings=settings,
        predictor=predictor,
        sink=sink,
    )
    start = time.perf_counter()
    records = pipeline.replay(source)
    elapsed = time.perf_counter() - start
    changes = list(sink.segment_changes)
    moved = [c for c in changes if c.old_segment is not None]
    console.print(
        f"replayed {records:,} records in {elapsed:.1f} s "
        f"({records / max(elapsed, 1e-9):,.0f} events/s): {len(changes):,} segment "
        f"assignments, {len(moved):,} players moved segment as their bets arrived"
    )
    table = Table(title="latest segment changes (player, old, new)")
    for column in ("player", "old segment", "new segment"):
        table.add_column(column)
    for change in moved[-8:]:
        table.add_row(change.player_id, str(change.old_segment), change.new_segment)
    console.print(table)


@app.command()
def predict(
    player: Annotated[
        str | None, typer.Option(help="Raw player id to look up.")
    ] = None,
    features: Annotated[
        str | None, typer.Option(help="JSON object of feature values.")
    ] = None,
    input: Annotated[
        Path | None,
        typer.Option("--input", "-i", help="Transactions file: predict every player."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write batch predictions (Parquet or CSV).")
    ] = None,
    model: Annotated[str, typer.Option(help="Registry alias or version.")] = "champion",
    format: Annotated[
        str, typer.Option(help="With --input: auto, csv, parquet, jsonl or bustabit.")
    ] = "auto",
    mapping: Annotated[
        str | None, typer.Option(help="With --input: " + MAPPING_HELP)
    ] = None,
    source_ids: Annotated[
        bool,
        typer.Option(
            "--source-ids",
            help="With --input: add each player's raw id as source_player_id, "
            "for the CRM that receives the file. Off by default, since the "
            "file then identifies players.",
        ),
    ] = False,
) -> None:
    """Predict one player (by id and/or features) or every player of a file."""
    from crmbet.events.pseudonym import PSEUDONYM_PATTERN
    from crmbet.models.registry import ModelRegistry
    from crmbet.serving.predictor import SegmentPredictor
    from crmbet.training import RecordingPseudonymizer, pseudonymizer_from, read_source

    if out is not None and out.suffix not in (".csv", ".parquet"):
        raise typer.BadParameter(
            f"--out {out} has the suffix {out.suffix!r}; name a .csv or .parquet file"
        )
    if input is None and (source_ids or out is not None):
        raise typer.BadParameter("--out and --source-ids need --input")
    settings = get_settings()
    predictor = SegmentPredictor.from_registry(ModelRegistry(settings), model)
    if input is not None:
        recorder = (
            RecordingPseudonymizer(settings.pseudonym_key_bytes())
            if source_ids
            else None
        )
        column_mapping = parse_mapping(mapping)
        events = read_source(
            input,
            settings=settings,
            source_format=format,  # type: ignore[arg-type]
            mapping=column_mapping,
            pseudonymizer=recorder,
        ).events
        batch = predictor.predict_events(events)
        table = batch.to_polars()
        if recorder is not None:
            table = (
                recorder.id_table()
                .join(table, on="player_id", how="right", maintain_order="right")
                .select("source_player_id", *table.columns)
            )
        if out is not None:
            if out.suffix == ".csv":
                table.write_csv(out)
            else:
                table.write_parquet(out)
            if source_ids:
                # The file identifies players, like the source data.
                out.chmod(0o600)
            console.print(f"wrote {table.height:,} predictions to {out}")
        counts = Table(title=f"{table.height:,} players by segment")
        for column in ("segment", "players", "share"):
            counts.add_column(
                column, justify="left" if column == "segment" else "right"
            )
        sizes = (
            table.group_by("segment")
            .len()
            .sort(["len", "segment"], descending=[True, False])
        )
        for segment, size in sizes.iter_rows():
            counts.add_row(str(segment), f"{size:,}", f"{size / table.height:.1%}")
        console.print(counts)
        return
    if player is None and features is None:
        raise typer.BadParameter("pass --player, --features or --input")
    given = _json_object(features, "--features") if features else {}
    # Same vocabulary as the HTTP API's feature_source.
    source = "request"
    status = None
    if player is not None:
        from crmbet.features.store import EnterpriseFeatureStore, FeatureRequest
        from crmbet.training import key_mismatch

        pseudonymizer = pseudonymizer_from(settings)
        mismatch = key_mismatch(predictor.model, pseudonymizer)
        if mismatch:
            logger.warning("%s", mismatch)
        store = EnterpriseFeatureStore.from_settings(settings)
        # A pseudonym copied from crmbet's own output is looked up as it is.
        pseudonym = (
            player
            if PSEUDONYM_PATTERN.fullmatch(player)
            else pseudonymizer.pseudonymize(player)
        )
        response = store.get_features_sync(FeatureRequest(pseudonym))
        stored = response.row(0)
        store.close()
        status = response.status[0]
        if stored is not None and status == "fresh":
            source = "request+online_store" if given else "online_store"
            given = {k: v for k, v in stored.items() if v == v} | given
        elif not given:
            source = "cold_start"
    prediction = predictor.predict_features(
        given, player_id=player, cold_start=source == "cold_start"
    )
    body = prediction.to_dict()
    body["feature_source"] = source
    if status is not None:
        body["feature_status"] = status
    console.print_json(json.dumps(body, default=str))


@app.command()
def segments(
    model: Annotated[str, typer.Option(help="Registry alias or version.")] = "champion",
) -> None:
    """Show the segments of a registered model."""
    from crmbet.models.registry import ModelRegistry

    loaded = ModelRegistry(get_settings()).load(model)
    console.print(
        segment_table(loaded, title=f"{loaded.name} version {loaded.version}")
    )


@app.command()
def report(
    out: Annotated[Path, typer.Option(help="HTML file to write.")] = Path(
        ".crmbet/report.html"
    ),
    model: Annotated[str, typer.Option(help="Registry alias or version.")] = "champion",
) -> None:
    """Write the HTML report of a registered model."""
    from crmbet.models.registry import ModelRegistry
    from crmbet.reporting import write_report

    loaded = ModelRegistry(get_settings()).load(model)
    console.print(f"report: {write_report(loaded, out)}")


@features_app.command("list")
def features_list() -> None:
    """List every registered feature."""
    from crmbet.features.definitions import FEATURES, SEGMENTATION_FEATURES

    table = Table(
        title=f"{len(FEATURES)} registered features (state fields: "
        "crmbet features lineage NAME)"
    )
    table.add_column("name", no_wrap=True)
    for column in ("v", "dtype", "group", "seg", "description"):
        table.add_column(column, overflow="fold")
    for feature in FEATURES.values():
        table.add_row(
            feature.name,
            str(feature.version),
            feature.dtype,
            feature.group,
            "yes" if feature.name in SEGMENTATION_FEATURES else "",
            feature.description,
        )
    console.print(table)


@features_app.command("lineage")
def features_lineage(
    name: Annotated[str, typer.Argument(help="Feature name.")],
) -> None:
    """Show the raw fields, state fields and related features of one feature."""
    from crmbet.features.definitions import lineage

    try:
        info = lineage(name)
    except KeyError as error:
        console.print(f"[red]{error.args[0]}[/red]")
        raise typer.Exit(2) from error
    console.print_json(json.dumps(info))


def _register_extensions() -> None:
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is None or not module_name.startswith(error.name):
                raise
            continue
        module.register(app)


_register_extensions()


def main() -> None:
    """Run the command line, turning crmbet errors into one-line messages."""
    import polars as pl

    from crmbet.errors import CrmbetError

    try:
        app(standalone_mode=True)
    except (
        CrmbetError,
        FileNotFoundError,
        ValueError,
        KeyError,
        pl.exceptions.PolarsError,
    ) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        logger.debug("command failed", exc_info=True)
        console.print(f"[red]error:[/red] {message}")
        sys.exit(2)

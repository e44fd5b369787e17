"""The ``crmbet scale`` commands: features and training on the local or Dask engine."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

scale_app = typer.Typer(
    help="Run features and training on a Dask cluster or on data larger than memory.",
    no_args_is_help=True,
)

Input = Annotated[
    Path, typer.Option("--input", "-i", help="Transactions file or folder.")
]
EngineOption = Annotated[
    str,
    typer.Option(
        help="'local' (one process, bounded memory) or 'dask' (a Dask cluster)."
    ),
]
Scheduler = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        help="Address of a running Dask scheduler, e.g. tcp://10.0.0.5:8786; "
        "a LocalCluster starts when omitted.",
    ),
]
Workers = Annotated[
    int,
    typer.Option(min=1, help="LocalCluster workers (the minimum when auto scaling)."),
]
MemoryLimit = Annotated[
    str, typer.Option(help="Memory limit per LocalCluster worker, e.g. 4GB.")
]
WorkDir = Annotated[
    Path | None,
    typer.Option(help="Folder for the job's datasets; CRMBET_HOME/scale by default."),
]
Buckets = Annotated[
    int | None,
    typer.Option(
        min=1, help="Player buckets; about one per million events by default."
    ),
]
BatchSize = Annotated[int, typer.Option(min=1, help="Source rows per ingest task.")]
Format = Annotated[str, typer.Option(help="auto, csv, parquet, jsonl or bustabit.")]


def _engine_name(value: str) -> Literal["local", "dask"]:
    if value not in ("local", "dask"):
        raise typer.BadParameter(
            f"--engine {value!r} is invalid; pass 'local' or 'dask'"
        )
    return value  # type: ignore[return-value]


def _cluster_config(engine: str, scheduler: str | None, **values: Any) -> Any:
    from crmbet.pipeline import ClusterConfig

    if engine == "dask":
        # Dask logs every connection at INFO; crmbet's own logs report the
        # cluster's start, scaling events and close. Importing distributed
        # first keeps its logging setup from resetting the level later.
        import distributed  # noqa: F401

        logging.getLogger("distributed").setLevel(logging.WARNING)

    return ClusterConfig(
        engine=_engine_name(engine), scheduler_address=scheduler, **values
    )


@scale_app.command("features")
def features_command(
    input: Input,
    engine: EngineOption = "local",
    scheduler: Scheduler = None,
    n_workers: Workers = 2,
    memory_limit: MemoryLimit = "4GB",
    work_dir: WorkDir = None,
    buckets: Buckets = None,
    batch_size: BatchSize = 1_000_000,
    format: Format = "auto",
    previous: Annotated[
        Path | None,
        typer.Option(
            help="Work folder of an earlier job whose player states new events extend."
        ),
    ] = None,
) -> None:
    """Compute player features into a partitioned Parquet dataset."""
    from crmbet.cli import console
    from crmbet.config import get_settings
    from crmbet.scale.engines import DaskEngine, LocalEngine
    from crmbet.scale.job import compute_player_features
    from crmbet.training import pseudonymizer_from

    settings = get_settings()
    config = _cluster_config(
        engine, scheduler, n_workers=n_workers, memory_limit=memory_limit
    )
    folder = work_dir or settings.home / "scale"
    options: dict[str, Any] = {
        "work_dir": folder,
        "pseudonymizer": pseudonymizer_from(settings),
        "source_format": format,
        "n_buckets": buckets,
        "batch_size": batch_size,
        "previous": previous,
    }
    if config.engine == "local":
        job = compute_player_features(input, engine=LocalEngine(), **options)
    else:
        from crmbet.scale.cluster import open_cluster

        with open_cluster(config) as client:
            job = compute_player_features(input, engine=DaskEngine(client), **options)
    console.print(
        f"{job.engine} engine: {job.n_events:,} events, {job.n_dead_letters:,} "
        f"dead letters, {job.n_players:,} players in {job.n_buckets} buckets"
    )
    console.print(f"features: {job.layout.features}")
    console.print(
        f"timings (s): {json.dumps({k: round(v, 2) for k, v in job.timings.items()})}"
    )


@scale_app.command("train")
def train_command(
    input: Input,
    engine: EngineOption = "local",
    scheduler: Scheduler = None,
    n_workers: Workers = 2,
    memory_limit: MemoryLimit = "4GB",
    auto_scale: Annotated[
        bool,
        typer.Option(
            help="Let the LocalCluster adapt between --n-workers and --max-workers."
        ),
    ] = False,
    max_workers: Annotated[
        int, typer.Option(min=1, help="Most workers when auto scaling.")
    ] = 4,
    gpu: Annotated[
        bool,
        typer.Option(
            help="Fit k-means with cuML on a GPU when cuML and a GPU are present."
        ),
    ] = False,
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
    work_dir: WorkDir = None,
    buckets: Buckets = None,
    batch_size: BatchSize = 1_000_000,
    format: Format = "auto",
    register: Annotated[
        bool, typer.Option(help="Register the model in the registry.")
    ] = True,
) -> None:
    """Train and register a segmentation model on the chosen engine."""
    from crmbet.cli import _parse_k, console, segment_table
    from crmbet.config import get_settings
    from crmbet.scale.job import run_scale_training

    config = _cluster_config(
        engine,
        scheduler,
        n_workers=n_workers,
        memory_limit=memory_limit,
        enable_auto_scaling=auto_scale,
        max_workers=max_workers,
        use_gpu=gpu,
        k=_parse_k(k),
        k_min=k_min,
        k_max=k_max,
        seed=seed,
    )
    settings = get_settings()
    result = run_scale_training(
        input,
        config,
        work_dir=work_dir,
        settings=settings,
        source_format=format,
        n_buckets=buckets,
        batch_size=batch_size,
        register=register,
    )
    model = result.model
    console.print(
        segment_table(
            model, title=f"{model.n_segments} segments, model version {result.version}"
        )
    )
    job = result.job
    console.print(
        f"{job.engine} engine, k-means on {result.kmeans_backend.name}: "
        f"{job.n_events:,} events, {job.n_players:,} players, "
        f"{job.n_dead_letters:,} dead letters, "
        f"trained on {model.params['training_sample']}"
    )
    console.print(f"features: {job.layout.features}  segments: {job.layout.segments}")
    console.print(
        f"timings (s): "
        f"{json.dumps({k: round(v, 2) for k, v in result.timings.items()})}"
    )


def register(app: typer.Typer) -> None:
    """Add the ``scale`` commands to the ``crmbet`` command."""
    app.add_typer(scale_app, name="scale")

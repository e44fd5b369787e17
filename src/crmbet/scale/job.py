"""Scale-out jobs: features and training on the local or the Dask engine.

A job runs in four passes over the work folder (see :mod:`crmbet.scale.output`):

1. ingest: validate, pseudonymise and split the source into player buckets;
2. fold: fold each bucket's events into player states;
3. features: compute each bucket's features as of the newest event overall;
4. train and assign: fit k-means on the gathered player matrix, then assign
   every bucket's players to segments.

Every player's events are in one bucket, so each fold reads a player's
whole history and the states are exact. No state is merged across buckets. The
merge law joins states only where earlier states meet new events (the
``previous`` job of an incremental run).

The player matrix is far smaller than the transactions, so k-means runs in
one process on the gathered matrix while it fits within
``gather_limit_bytes``. Beyond that, k-means runs on a uniform sample of
players of that size, and only the assignment is distributed.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from crmbet.config import Settings, get_settings
from crmbet.errors import DegenerateDataError
from crmbet.events.adapters import SourceFormat
from crmbet.events.pseudonym import Pseudonymizer
from crmbet.events.validation import ColumnMapping
from crmbet.features.definitions import FEATURES
from crmbet.models.bundle import SegmentModel, train_segments
from crmbet.models.onnx_export import check_onnx_labels, export_onnx
from crmbet.scale.engines import DaskEngine, Engine, LocalEngine, Progress
from crmbet.scale.gpu import KMeansBackend, select_kmeans_backend, train_segments_gpu
from crmbet.scale.output import JobLayout, scan_player_features
from crmbet.scale.tasks import (
    BucketStats,
    IngestStats,
    in_sample,
    plan_ingest,
    run_assign,
    run_features,
    run_fold,
    run_ingest,
)

if TYPE_CHECKING:
    from crmbet.pipeline import ClusterConfig

logger = logging.getLogger(__name__)

#: Source rows per ingest task; bounds the memory of one task.
DEFAULT_BATCH_SIZE = 1_000_000
#: Events per bucket aimed at when the bucket count is chosen automatically.
EVENTS_PER_BUCKET = 1_000_000
#: Bucket count for sources whose row count is unknown before reading.
DEFAULT_BUCKETS = 8
#: Largest gathered feature matrix (players x features x 8 bytes): 512 MiB is
#: about 2.2 million players with the 31 registered features. Training keeps
#: about four copies of it in memory (table, matrix, scaled matrix, profiles).
GATHER_LIMIT_BYTES = 512 << 20
#: Players whose labels are checked against the ONNX export.
ONNX_CHECK_ROWS = 100_000


@dataclass
class FeatureJob:
    """Summary of a job's feature passes: counts, bucket layout and timings."""

    layout: JobLayout
    engine: str
    n_buckets: int
    n_events: int
    n_dead_letters: int
    n_players: int
    as_of: float
    buckets: list[int]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def matrix_bytes(self) -> int:
        """Size of the gathered feature matrix in bytes."""
        return self.n_players * len(FEATURES) * 8


@dataclass
class ScaleTrainingResult:
    """Outputs of a training job: model, version, gathered features and statistics."""

    job: FeatureJob
    model: SegmentModel
    version: str | None
    features: pl.DataFrame
    labels: np.ndarray
    sampled: bool
    kmeans_backend: KMeansBackend
    segment_sizes: dict[int, int]
    onnx_mismatches: int
    timings: dict[str, float] = field(default_factory=dict)
    adjusted_rand_index: float | None = None

    @property
    def n_events(self) -> int:
        """Valid events read."""
        return self.job.n_events

    @property
    def n_dead_letters(self) -> int:
        """Invalid records left out."""
        return self.job.n_dead_letters

    @property
    def states(self) -> pl.DataFrame:
        """Every player's state, read from the work folder into memory."""
        return pl.read_parquet(self.job.layout.states / "*.parquet").sort("player_id")


def _choose_buckets(n_buckets: int | None, n_rows: int | None, engine: Engine) -> int:
    if n_buckets is not None:
        if n_buckets < 1:
            raise ValueError(
                f"n_buckets={n_buckets} is invalid; pass a positive number"
            )
        return n_buckets
    by_size = math.ceil(n_rows / EVENTS_PER_BUCKET) if n_rows else DEFAULT_BUCKETS
    # Two buckets per worker at least, so no worker idles in the fold pass.
    return max(by_size, 2 * engine.parallelism, 1)


def compute_player_features(
    source: str | Path,
    *,
    engine: Engine,
    work_dir: str | Path,
    pseudonymizer: Pseudonymizer,
    source_format: SourceFormat = "auto",
    mapping: ColumnMapping | None = None,
    n_buckets: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    as_of: float | None = None,
    previous: str | Path | None = None,
    progress: Progress | None = None,
) -> FeatureJob:
    """Compute every player's features from a source into a partitioned dataset.

    Parameters
    ----------
    source:
        Raw transactions: a Parquet file or folder (split into row ranges),
        or a CSV, JSON-lines or bustabit file (read by one task).
    engine:
        :class:`LocalEngine` or :class:`DaskEngine`.
    work_dir:
        Folder for the job's datasets; outputs of an earlier job there are
        replaced. The features land in ``work_dir/features``.
    n_buckets:
        Player buckets; about one per million events by default.
    as_of:
        Unix time the features are read at; the newest event by default.
    previous:
        Work folder of an earlier job whose states the new events extend.

    Returns
    -------
    FeatureJob
    """
    layout = JobLayout(Path(work_dir))
    previous_layout = JobLayout(Path(previous)) if previous is not None else None
    if previous_layout and previous_layout.root.resolve() == layout.root.resolve():
        raise ValueError(
            f"previous={previous} is the work folder itself, whose states the job "
            "replaces; write the new job to another folder"
        )
    tasks = plan_ingest(source, source_format, batch_size)
    parquet = all(task.source_format == "parquet" for task in tasks)
    known_rows = sum(task.length or 0 for task in tasks) if parquet else None
    if previous_layout is not None:
        n_buckets = _check_previous(previous_layout, n_buckets)
    n_buckets = _choose_buckets(n_buckets, known_rows, engine)
    layout.prepare(n_buckets)
    timings: dict[str, float] = {}
    logger.info(
        "%s engine: %d ingest tasks into %d player buckets under %s",
        engine.name,
        len(tasks),
        n_buckets,
        layout.root,
    )

    clock = time.perf_counter()
    ingested: list[IngestStats] = engine.map(
        run_ingest,
        tasks,
        step="ingest",
        progress=progress,
        layout=layout,
        n_buckets=n_buckets,
        pseudonymizer=pseudonymizer,
        mapping=mapping,
        batch_size=batch_size,
    )
    timings["ingest_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    buckets = list(range(n_buckets))
    folded: list[BucketStats] = engine.map(
        run_fold,
        buckets,
        step="fold",
        progress=progress,
        layout=layout,
        previous=previous_layout,
    )
    timings["fold_s"] = time.perf_counter() - clock
    n_players = sum(stats.n_players for stats in folded)
    if n_players == 0:
        raise DegenerateDataError(
            f"no valid events in {source}; check the dead letters "
            f"under {layout.dead_letters}"
        )
    if as_of is None:
        as_of = max(stats.last_ts for stats in folded if stats.last_ts is not None)

    clock = time.perf_counter()
    filled = [stats.bucket for stats in folded if stats.n_players]
    engine.map(
        run_features,
        filled,
        step="features",
        progress=progress,
        layout=layout,
        as_of=as_of,
    )
    timings["features_s"] = time.perf_counter() - clock

    job = FeatureJob(
        layout=layout,
        engine=engine.name,
        n_buckets=n_buckets,
        n_events=sum(s.n_events for s in ingested),
        n_dead_letters=sum(s.n_dead_letters for s in ingested),
        n_players=n_players,
        as_of=as_of,
        buckets=filled,
        timings=timings,
    )
    logger.info(
        "%d events, %d dead letters, %d players; features in %s",
        job.n_events,
        job.n_dead_letters,
        n_players,
        layout.features,
    )
    return job


def _check_previous(previous: JobLayout, n_buckets: int | None) -> int:
    saved = previous.read_layout()["n_buckets"]
    if n_buckets is not None and n_buckets != saved:
        raise ValueError(
            f"n_buckets={n_buckets} differs from the {saved} buckets of the earlier "
            f"job in {previous.root}; pass n_buckets={saved} or leave it unset"
        )
    return int(saved)


def gather_features(
    job: FeatureJob, *, limit_bytes: int = GATHER_LIMIT_BYTES
) -> tuple[pl.DataFrame, bool]:
    """Read the player features into this process, sorted by ``player_id``.

    Returns the table and whether it contains every player: when the full
    matrix would exceed ``limit_bytes``, a uniform sample of players of
    about that size is read instead.
    """
    scan = scan_player_features(job.layout.root).drop("bucket")
    complete = job.matrix_bytes <= limit_bytes
    if not complete:
        fraction = limit_bytes / job.matrix_bytes
        scan = scan.filter(in_sample(fraction))
        logger.info(
            "feature matrix of %d players (%.1f GiB) exceeds %.1f GiB: training "
            "on a %.1f%% sample of players",
            job.n_players,
            job.matrix_bytes / 2**30,
            limit_bytes / 2**30,
            100 * fraction,
        )
    return scan.collect().sort("player_id"), complete


def fit_segments(
    features: pl.DataFrame,
    backend: KMeansBackend,
    *,
    k: int | None,
    k_range: tuple[int, int],
    seed: int,
    as_of: float,
    client: Any = None,
    progress: Progress | None = None,
) -> tuple[SegmentModel, np.ndarray]:
    """Train the segmentation model on a gathered feature table with ``backend``."""
    if backend.on_gpu:
        return train_segments_gpu(
            features,
            backend,
            k=k,
            k_range=k_range,
            seed=seed,
            as_of=as_of,
            client=client,
        )
    return train_segments(
        features, k=k, k_range=k_range, seed=seed, as_of=as_of, progress=progress
    )


def train_on_engine(
    source: str | Path,
    *,
    engine: Engine,
    work_dir: str | Path,
    settings: Settings | None = None,
    source_format: SourceFormat = "auto",
    mapping: ColumnMapping | None = None,
    k: int | None = None,
    k_range: tuple[int, int] = (3, 12),
    seed: int = 0,
    use_gpu: bool = False,
    register: bool = True,
    n_buckets: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    gather_limit_bytes: int = GATHER_LIMIT_BYTES,
    progress: Progress | None = None,
) -> ScaleTrainingResult:
    """Compute features on ``engine``, train, register and assign every player.

    The model records ``engine``, ``kmeans_backend``, ``n_buckets`` and
    ``training_sample`` among its parameters in the registry.
    """
    from crmbet.training import pseudonymizer_from

    settings = settings or get_settings()
    job = compute_player_features(
        source,
        engine=engine,
        work_dir=work_dir,
        pseudonymizer=pseudonymizer_from(settings),
        source_format=source_format,
        mapping=mapping,
        n_buckets=n_buckets,
        batch_size=batch_size,
        progress=progress,
    )
    timings = dict(job.timings)

    clock = time.perf_counter()
    features, complete = gather_features(job, limit_bytes=gather_limit_bytes)
    timings["gather_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    client = engine.client if isinstance(engine, DaskEngine) else None
    backend = select_kmeans_backend(use_gpu, distributed=client is not None)
    model, labels = fit_segments(
        features,
        backend,
        k=k,
        k_range=k_range,
        seed=seed,
        as_of=job.as_of,
        client=client,
        progress=progress,
    )
    model.params.update(
        {
            "engine": engine.name,
            "kmeans_backend": backend.name,
            "n_buckets": job.n_buckets,
            "training_sample": "all players"
            if complete
            else f"{features.height} players",
        }
    )
    timings["train_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    onnx_bytes = export_onnx(model.pipeline, len(model.feature_names))
    mismatches = check_onnx_labels(
        onnx_bytes, model.pipeline, model.matrix(features.head(ONNX_CHECK_ROWS))
    )
    timings["onnx_s"] = time.perf_counter() - clock

    version = None
    if register:
        from crmbet.models.registry import ModelRegistry

        clock = time.perf_counter()
        extra = {
            "onnx_label_mismatches": float(mismatches),
            "n_events": float(job.n_events),
            "n_dead_letters": float(job.n_dead_letters),
        }
        version = ModelRegistry(settings).register(
            model, onnx_bytes=onnx_bytes, extra_metrics=extra
        )
        timings["register_s"] = time.perf_counter() - clock

    # With every player gathered, assigning here is cheaper than on Dask
    # workers, which would each import scikit-learn to load the model first.
    clock = time.perf_counter()
    assign_engine = LocalEngine() if complete else engine
    sizes: dict[int, int] = {}
    for counts in assign_engine.map(
        run_assign,
        job.buckets,
        step="assign",
        progress=progress,
        layout=job.layout,
        model=model,
    ):
        for cluster_id, size in counts.items():
            sizes[cluster_id] = sizes.get(cluster_id, 0) + size
    timings["assign_s"] = time.perf_counter() - clock
    return ScaleTrainingResult(
        job=job,
        model=model,
        version=version,
        features=features,
        labels=labels,
        sampled=not complete,
        kmeans_backend=backend,
        segment_sizes=sizes,
        onnx_mismatches=mismatches,
        timings=timings,
    )


def run_scale_training(
    source: str | Path,
    config: ClusterConfig,
    *,
    work_dir: str | Path | None = None,
    settings: Settings | None = None,
    processes: bool = True,
    **options: Any,
) -> ScaleTrainingResult:
    """Run :func:`train_on_engine` with the engine a cluster configuration selects.

    ``config.engine == "dask"`` connects to ``config.scheduler_address`` or
    starts a LocalCluster (see :func:`crmbet.scale.cluster.open_cluster`);
    ``k``, ``k_min``, ``k_max``, ``seed`` and ``use_gpu`` come from
    ``config`` too. Other keyword options go to :func:`train_on_engine`.
    """
    settings = settings or get_settings()
    work_dir = Path(work_dir) if work_dir is not None else settings.home / "scale"
    options = {
        "k": config.k,
        "k_range": (config.k_min, config.k_max),
        "seed": config.seed,
        "use_gpu": config.use_gpu,
        **options,
    }
    if config.engine == "local":
        return train_on_engine(
            source,
            engine=LocalEngine(),
            work_dir=work_dir,
            settings=settings,
            **options,
        )
    from crmbet.scale.cluster import open_cluster

    with open_cluster(config, processes=processes) as client:
        return train_on_engine(
            source,
            engine=DaskEngine(client),
            work_dir=work_dir,
            settings=settings,
            **options,
        )

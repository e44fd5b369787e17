"""The local and Dask engines give the same features and segments."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from sklearn.metrics import adjusted_rand_score

from crmbet.events.adapters import ingest
from crmbet.events.pseudonym import Pseudonymizer
from crmbet.features.definitions import compute_features
from crmbet.features.state import fold
from crmbet.models.bundle import SegmentModel, train_segments
from crmbet.pipeline import ClusterConfig
from crmbet.scale.cluster import BLAS_THREAD_VARIABLES, open_cluster
from crmbet.scale.engines import DaskEngine, LocalEngine
from crmbet.scale.job import FeatureJob, compute_player_features, gather_features
from crmbet.scale.output import scan_segments
from crmbet.scale.tasks import bucket_of, run_assign

pytestmark = pytest.mark.integration

BATCH_SIZE = 10_000
RTOL = 1e-9


def read_features(job: FeatureJob) -> pl.DataFrame:
    return pl.read_parquet(job.layout.features / "**" / "*.parquet").sort("player_id")


def assert_same_features(left: pl.DataFrame, right: pl.DataFrame) -> None:
    assert_frame_equal(left, right, check_exact=False, rtol=RTOL, atol=0.0)


def echo_options(item: int, *, batch_size: int, pure: int) -> tuple[int, int, int]:
    return item, batch_size, pure


def fit_segments(features: pl.DataFrame) -> tuple[SegmentModel, np.ndarray]:
    return train_segments(features, k=6, seed=0)


def test_local_engine_matches_one_fold(
    local_job: FeatureJob, transactions_path: Path, pseudonymizer: Pseudonymizer
) -> None:
    events = ingest(transactions_path, pseudonymizer=pseudonymizer).events
    expected = compute_features(fold(events)).sort("player_id")
    assert local_job.n_events == events.height
    assert local_job.n_players == expected.height
    assert_same_features(read_features(local_job), expected)


def test_features_partitioned_by_bucket(local_job: FeatureJob) -> None:
    frame = pl.scan_parquet(
        local_job.layout.features / "**" / "*.parquet", hive_partitioning=True
    ).collect()
    expected = frame.select(bucket_of(local_job.n_buckets)).to_series()
    assert frame["player_id"].is_unique().all()
    assert (frame["bucket"] == expected).all()
    assert frame["bucket"].n_unique() == local_job.n_buckets


@pytest.mark.slow
def test_dask_engine_matches_local(
    local_job: FeatureJob,
    transactions_path: Path,
    pseudonymizer: Pseudonymizer,
    tmp_path: Path,
) -> None:
    local = read_features(local_job)
    model, local_labels = fit_segments(local)
    # Thread workers measure the whole test process, which earlier tests have
    # grown, so a small memory limit would pause them and the job would hang.
    config = ClusterConfig(engine="dask", n_workers=2, memory_limit="16GB")
    with open_cluster(config, processes=False) as client:
        engine = DaskEngine(client)
        assert engine.parallelism == 2
        # Keyword names that Client.map also takes still reach the task.
        echoed = engine.map(echo_options, [1, 2], step="echo", batch_size=7, pure=3)
        assert echoed == [(1, 7, 3), (2, 7, 3)]
        dask_job = compute_player_features(
            transactions_path,
            engine=engine,
            work_dir=tmp_path,
            pseudonymizer=pseudonymizer,
            n_buckets=5,
            batch_size=BATCH_SIZE,
        )
        sizes = engine.map(
            run_assign,
            dask_job.buckets,
            step="assign",
            layout=dask_job.layout,
            model=model,
        )
    distributed = read_features(dask_job)
    assert dask_job.n_players == local_job.n_players
    assert dask_job.as_of == local_job.as_of
    assert_same_features(distributed, local)

    _, dask_labels = fit_segments(distributed)
    assert adjusted_rand_score(local_labels, dask_labels) >= 0.99
    segments = scan_segments(dask_job.layout.root).collect().sort("player_id")
    assert sum(sum(counts.values()) for counts in sizes) == local_job.n_players
    assert (segments["player_id"] == local["player_id"]).all()
    assert (segments["cluster_id"].to_numpy() == local_labels).all()


@pytest.mark.slow
def test_killed_worker_recovered(
    local_job: FeatureJob,
    transactions_path: Path,
    pseudonymizer: Pseudonymizer,
    tmp_path: Path,
) -> None:
    config = ClusterConfig(engine="dask", n_workers=2, memory_limit="1GB")
    killed: list[int] = []
    victim_tasks: list[int] = []
    with open_cluster(config, processes=True) as client:
        pids = client.run(os.getpid)

        def kill_once(step: str, count: int) -> None:
            # Kill a worker with tasks in hand after the first ingest task.
            if step == "ingest" and not killed:
                processing = client.processing()
                address = max(pids, key=lambda a: len(processing.get(a, ())))
                victim_tasks.append(len(processing.get(address, ())))
                os.kill(pids[address], signal.SIGKILL)
                killed.append(pids[address])

        job = compute_player_features(
            transactions_path,
            engine=DaskEngine(client),
            work_dir=tmp_path,
            pseudonymizer=pseudonymizer,
            n_buckets=4,
            batch_size=BATCH_SIZE // 2,
            progress=kill_once,
        )
        survivors = set(client.run(os.getpid).values())
    assert len(killed) == 1
    assert victim_tasks[0] > 0
    assert killed[0] not in survivors
    assert job.n_events == local_job.n_events
    assert_same_features(read_features(job), read_features(local_job))


@pytest.mark.slow
def test_local_cluster_restores_blas_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    # Unset in the caller, so the nanny's default of 1 applies to the worker.
    for name in BLAS_THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    before = {name: os.environ.get(name) for name in BLAS_THREAD_VARIABLES}
    config = ClusterConfig(engine="dask", n_workers=1, memory_limit="1GB")
    with open_cluster(config, processes=True) as client:
        inside = {name: os.environ.get(name) for name in BLAS_THREAD_VARIABLES}
        on_worker = client.run(lambda: os.environ.get("OMP_NUM_THREADS"))
    after = {name: os.environ.get(name) for name in BLAS_THREAD_VARIABLES}
    assert inside == before
    assert after == before
    assert list(on_worker.values()) == ["1"]


def test_incremental_job_matches_full(
    local_job: FeatureJob,
    transactions: pl.DataFrame,
    pseudonymizer: Pseudonymizer,
    tmp_path: Path,
) -> None:
    cut = (
        transactions["ts"].min()
        + (transactions["ts"].max() - transactions["ts"].min()) / 2
    )
    first, second = tmp_path / "first.parquet", tmp_path / "second.parquet"
    transactions.filter(pl.col("ts") < cut).write_parquet(first)
    transactions.filter(pl.col("ts") >= cut).write_parquet(second)
    engine = LocalEngine()
    earlier = compute_player_features(
        first,
        engine=engine,
        work_dir=tmp_path / "a",
        pseudonymizer=pseudonymizer,
        n_buckets=3,
    )
    later = compute_player_features(
        second,
        engine=engine,
        work_dir=tmp_path / "b",
        pseudonymizer=pseudonymizer,
        previous=earlier.layout.root,
    )
    assert later.n_buckets == 3
    with pytest.raises(ValueError, match="is the work folder itself"):
        compute_player_features(
            second,
            engine=engine,
            work_dir=tmp_path / "b",
            pseudonymizer=pseudonymizer,
            previous=tmp_path / "b",
        )
    assert later.n_players == local_job.n_players
    assert_same_features(read_features(later), read_features(local_job))


def test_sampled_training_assigns_everyone(
    local_job: FeatureJob, transactions_path: Path, tmp_path: Path, settings
) -> None:
    from crmbet.cli import _print_training
    from crmbet.scale.job import train_on_engine

    limit = local_job.matrix_bytes // 4
    sample, complete = gather_features(local_job, limit_bytes=limit)
    assert not complete
    assert 0.15 * local_job.n_players < sample.height < 0.35 * local_job.n_players

    result = train_on_engine(
        transactions_path,
        engine=LocalEngine(),
        work_dir=tmp_path,
        settings=settings,
        k=4,
        register=False,
        batch_size=BATCH_SIZE,
        gather_limit_bytes=limit,
    )
    segments = scan_segments(result.job.layout.root).collect()
    assert result.sampled
    assert result.model.params["training_sample"] == f"{result.features.height} players"
    assert segments.height == local_job.n_players
    assert segments["player_id"].is_unique().all()
    assert sum(result.segment_sizes.values()) == local_job.n_players
    assert result.onnx_mismatches == 0
    # The summary of `crmbet train` accepts a scale-out result as well.
    _print_training(result)
    assert result.states.height == local_job.n_players


# MLflow warns that the pyfunc wrapper's predict has untyped input.
@pytest.mark.filterwarnings("ignore:.*Any type hint is inferred:UserWarning")
def test_registry_records_backend(
    transactions_path: Path, tmp_path: Path, settings
) -> None:
    from crmbet.models.registry import ModelRegistry
    from crmbet.scale.job import train_on_engine

    result = train_on_engine(
        transactions_path,
        engine=LocalEngine(),
        work_dir=tmp_path,
        settings=settings,
        k=6,
        batch_size=BATCH_SIZE,
        register=True,
    )
    registry = ModelRegistry(settings)
    run_id = registry.client.get_model_version(
        registry.model_name, result.version
    ).run_id
    params = registry.client.get_run(run_id).data.params
    assert result.kmeans_backend.name == "sklearn"
    assert params["kmeans_backend"] == "sklearn"
    assert params["engine"] == "local"
    assert params["n_buckets"] == str(result.job.n_buckets)


@pytest.mark.slow
def test_adaptive_scaling_counts_events(caplog: pytest.LogCaptureFixture) -> None:
    import time

    from prometheus_client import REGISTRY

    def events(direction: str) -> float:
        value = REGISTRY.get_sample_value(
            "scaling_events_total", {"direction": direction}
        )
        return value or 0.0

    def wait_for(direction: str, count: float) -> None:
        deadline = time.monotonic() + 30
        while events(direction) == count and time.monotonic() < deadline:
            time.sleep(0.2)

    up, down = events("up"), events("down")
    config = ClusterConfig(
        engine="dask",
        n_workers=1,
        max_workers=2,
        memory_limit="16GB",  # thread workers: see test_dask_engine_matches_local
        enable_auto_scaling=True,
    )
    with (
        caplog.at_level(logging.INFO, logger="crmbet.scale.cluster"),
        open_cluster(config, processes=False) as client,
    ):
        futures = client.map(time.sleep, [0.5] * 40, pure=False)
        wait_for("up", up)
        client.cancel(futures)
        # Idle again, the cluster shrinks back to its minimum of one worker.
        wait_for("down", down)
    assert events("up") > up
    assert events("down") > down
    assert "joined, worker count 2" in caplog.text
    assert "left, worker count 1" in caplog.text


def test_background_threads_stopped() -> None:
    names = [thread.name for thread in threading.enumerate()]
    assert "crmbet-scaling-watcher" not in names

"""Buckets, samples, layouts, the environment guard and the k-means backend choice."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import polars as pl
import pytest

from crmbet.errors import CrmbetError
from crmbet.events.pseudonym import Pseudonymizer
from crmbet.scale.cluster import EnvironmentGuard, local_cluster_kwargs
from crmbet.scale.engines import LocalEngine
from crmbet.scale.gpu import select_kmeans_backend
from crmbet.scale.job import _choose_buckets
from crmbet.scale.output import JobLayout
from crmbet.scale.tasks import bucket_of, in_sample, plan_ingest


@pytest.fixture(scope="module")
def pseudonyms(pseudonymizer: Pseudonymizer) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "player_id": [
                pseudonymizer.pseudonymize(f"player-{i}") for i in range(20_000)
            ]
        }
    )


def test_bucket_from_pseudonym_digits(pseudonyms: pl.DataFrame) -> None:
    buckets = pseudonyms.select(bucket_of(7)).to_series()
    expected = [int(pid[2:10], 16) % 7 for pid in pseudonyms["player_id"]]
    assert buckets.to_list() == expected
    assert buckets.value_counts()["count"].min() > 20_000 / 7 * 0.9


def test_bucket_of_other_ids() -> None:
    frame = pl.DataFrame({"player_id": ["alice", "bob", "p_zz"]})
    buckets = frame.select(bucket_of(4)).to_series()
    assert buckets.null_count() == 0
    assert buckets.is_between(0, 3).all()
    assert buckets.to_list() == frame.select(bucket_of(4)).to_series().to_list()


@pytest.mark.parametrize("fraction", [0.05, 0.25, 0.8])
def test_sample_fraction(pseudonyms: pl.DataFrame, fraction: float) -> None:
    share = pseudonyms.select(in_sample(fraction)).to_series().mean()
    assert abs(share - fraction) < 0.02


def test_sample_independent_of_bucket(pseudonyms: pl.DataFrame) -> None:
    frame = pseudonyms.select(
        bucket_of(2).alias("bucket"), in_sample(0.5).alias("kept")
    )
    shares = frame.group_by("bucket").agg(pl.col("kept").mean())["kept"]
    assert (shares - 0.5).abs().max() < 0.03


def test_plan_splits_parquet_rows(tmp_path: Path) -> None:
    pl.DataFrame({"x": range(10)}).write_parquet(tmp_path / "a.parquet")
    pl.DataFrame({"x": range(3)}).write_parquet(tmp_path / "b.parquet")
    tasks = plan_ingest(tmp_path, "auto", batch_size=4)
    assert [(Path(t.path).name, t.offset) for t in tasks] == [
        ("a.parquet", 0),
        ("a.parquet", 4),
        ("a.parquet", 8),
        ("b.parquet", 0),
    ]
    assert [t.task_id for t in tasks] == [0, 1, 2, 3]
    assert [t.length for t in tasks] == [4, 4, 2, 3]


def test_plan_one_task_for_csv(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("event_id,player_id\n1,a\n")
    tasks = plan_ingest(path, "auto", batch_size=1)
    assert len(tasks) == 1
    assert tasks[0].source_format == "csv"


def test_plan_missing_input(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        plan_ingest(tmp_path / "missing.parquet", "auto", batch_size=10)


def test_plan_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="contains no .parquet files"):
        plan_ingest(tmp_path, "parquet", batch_size=10)


def test_layout_keeps_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(CrmbetError, match="not empty"):
        JobLayout(tmp_path).prepare(4)
    assert (tmp_path / "notes.txt").exists()


def test_layout_clears_earlier_job(tmp_path: Path) -> None:
    layout = JobLayout(tmp_path / "job")
    layout.prepare(4)
    stale = layout.event_bucket(1) / "part-00000-0000.parquet"
    stale.parent.mkdir(parents=True)
    stale.write_text("old")
    layout.prepare(2)
    assert not stale.exists()
    assert layout.read_layout()["n_buckets"] == 2


def test_layout_read_requires_marker(tmp_path: Path) -> None:
    with pytest.raises(CrmbetError, match="layout.json"):
        JobLayout(tmp_path).read_layout()


def test_bucket_count_choice() -> None:
    engine = LocalEngine()
    assert _choose_buckets(None, 3_500_000, engine) == 4
    assert _choose_buckets(None, 10, engine) == 2
    assert _choose_buckets(None, None, engine) == 8
    assert _choose_buckets(5, 10**9, engine) == 5
    with pytest.raises(ValueError, match="n_buckets=0"):
        _choose_buckets(0, 10, engine)


def test_guard_restores_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    guard = EnvironmentGuard(("OMP_NUM_THREADS", "MKL_NUM_THREADS"))
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    assert sorted(guard.restore()) == ["MKL_NUM_THREADS", "OMP_NUM_THREADS"]
    assert os.environ["OMP_NUM_THREADS"] == "8"
    assert "MKL_NUM_THREADS" not in os.environ
    assert guard.restore() == []


def test_guard_covers_nanny_variables() -> None:
    guard = EnvironmentGuard()
    for name in (
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "MALLOC_TRIM_THRESHOLD_",
        "PYTHONHASHSEED",
    ):
        assert name in guard.names


def test_cluster_listens_on_loopback() -> None:
    from crmbet.pipeline import ClusterConfig

    config = ClusterConfig(engine="dask", n_workers=3, memory_limit="2GB")
    kwargs = local_cluster_kwargs(config, processes=True)
    assert kwargs["host"] == "127.0.0.1"
    assert kwargs["dashboard_address"].startswith("127.0.0.1:")
    assert kwargs["n_workers"] == 3
    assert kwargs["memory_limit"] == "2GB"
    assert "host" not in local_cluster_kwargs(config, processes=False)


def test_backend_cpu_when_gpu_off(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="crmbet.scale.gpu"):
        backend = select_kmeans_backend(False)
    assert backend.name == "sklearn"
    assert not backend.on_gpu
    assert "use_gpu is off" in caplog.text


@pytest.mark.skipif(
    importlib.util.find_spec("cuml") is not None, reason="cuML is installed"
)
@pytest.mark.parametrize("distributed", [False, True])
def test_backend_falls_back_without_cuml(
    caplog: pytest.LogCaptureFixture, distributed: bool
) -> None:
    with caplog.at_level(logging.WARNING, logger="crmbet.scale.gpu"):
        backend = select_kmeans_backend(True, distributed=distributed)
    assert backend.name == "sklearn"
    assert "cannot be imported" in backend.reason
    assert "cuml" in backend.reason
    assert "scikit-learn on the CPU" in caplog.text

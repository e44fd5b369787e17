"""GPU k-means with cuML when it is available, scikit-learn otherwise.

:func:`select_kmeans_backend` decides once per job and logs why, so the
choice can be recorded with the model (parameter ``kmeans_backend``).
cuML is optional: without it, or without a visible GPU, k-means runs on the
CPU and the job gives the same kind of model.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import polars as pl

from crmbet.features.definitions import SEGMENTATION_FEATURES

if TYPE_CHECKING:
    from crmbet.models.bundle import SegmentModel

logger = logging.getLogger(__name__)

BackendName = Literal["sklearn", "cuml", "cuml.dask"]


@dataclass(frozen=True)
class KMeansBackend:
    """The device and library a k-means fit uses, with the reason for the choice."""

    name: BackendName
    reason: str

    @property
    def on_gpu(self) -> bool:
        """True when the fit runs on a GPU."""
        return self.name != "sklearn"


def _gpu_count() -> int:
    """Return the number of CUDA devices visible to cupy, or 0."""
    try:
        cupy = importlib.import_module("cupy")
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception as error:  # noqa: BLE001 - any CUDA failure means no usable GPU
        logger.debug("no CUDA device is usable: %r", error)
        return 0


def select_kmeans_backend(use_gpu: bool, *, distributed: bool = False) -> KMeansBackend:
    """Choose the k-means backend and log the choice.

    Parameters
    ----------
    use_gpu:
        Whether the caller asked for the GPU (``ClusterConfig.use_gpu``).
    distributed:
        Whether the job runs on a Dask cluster; selects ``cuml.dask`` there.

    Returns
    -------
    KMeansBackend
        ``sklearn`` unless ``use_gpu`` is set, cuML imports and a CUDA
        device is visible.
    """
    if not use_gpu:
        choice = KMeansBackend("sklearn", "use_gpu is off")
        logger.info("k-means backend: scikit-learn on the CPU (%s)", choice.reason)
        return choice
    module = "cuml.dask.cluster" if distributed else "cuml"
    try:
        importlib.import_module(module)
    except ImportError as error:
        choice = KMeansBackend(
            "sklearn",
            f"use_gpu is set but {module} cannot be imported ({error}); install RAPIDS "
            "cuML to train on the GPU",
        )
        logger.warning(
            "k-means backend: scikit-learn on the CPU because %s", choice.reason
        )
        return choice
    if _gpu_count() == 0:
        choice = KMeansBackend(
            "sklearn", "use_gpu is set and cuML imports, but no CUDA device is visible"
        )
        logger.warning(
            "k-means backend: scikit-learn on the CPU because %s", choice.reason
        )
        return choice
    name: BackendName = "cuml.dask" if distributed else "cuml"
    choice = KMeansBackend(
        name, "use_gpu is set, cuML imports and a CUDA device is visible"
    )
    logger.info("k-means backend: %s on the GPU", name)
    return choice


def fit_centers_on_gpu(
    Z: np.ndarray,  # noqa: N803
    k: int,
    seed: int,
    backend: KMeansBackend,
    client: Any = None,
) -> np.ndarray:
    """Fit k-means on the GPU and return the centroids as a NumPy array.

    ``Z`` is the scaled feature matrix. With ``cuml.dask`` the matrix is
    split across the Dask workers of ``client``.
    """
    if backend.name == "cuml":
        cuml = importlib.import_module("cuml")
        model = cuml.KMeans(
            n_clusters=k, random_state=seed, n_init=4, output_type="numpy"
        )
        model.fit(Z)
        return np.asarray(model.cluster_centers_, dtype=np.float64)
    if backend.name == "cuml.dask":
        dask_array = importlib.import_module("dask.array")
        cluster_module = importlib.import_module("cuml.dask.cluster")
        chunks = max(1, Z.shape[0] // max(len(client.scheduler_info()["workers"]), 1))
        model = cluster_module.KMeans(n_clusters=k, random_state=seed, client=client)
        model.fit(dask_array.from_array(Z, chunks=(chunks, Z.shape[1])))
        return np.asarray(model.cluster_centers_, dtype=np.float64)
    raise ValueError(
        f"backend {backend.name!r} does not run on the GPU; use cuml or cuml.dask"
    )


def _as_numpy(values: Any) -> np.ndarray:
    """Copy a cupy or cudf array to host memory; pass NumPy arrays through."""
    if hasattr(values, "get"):
        values = values.get()
    elif hasattr(values, "to_numpy"):
        values = values.to_numpy()
    return np.asarray(values, dtype=np.float64)


def train_segments_gpu(
    features: pl.DataFrame,
    backend: KMeansBackend,
    *,
    k: int | None,
    k_range: tuple[int, int],
    seed: int,
    as_of: float,
    client: Any = None,
) -> tuple[SegmentModel, np.ndarray]:
    """Train a segmentation model with the k-means fit on the GPU.

    cuML finds the centroids on the scaled matrix. scikit-learn's k-means
    then starts from them (``n_init=1``) and converges in a few iterations,
    so the model stays a scikit-learn pipeline and ONNX export, the
    registry and serving are unchanged. An automatic k is chosen on the
    CPU with :func:`crmbet.models.select_k`, which works on a sample.

    NOTE: this path mirrors the final steps of
    :func:`crmbet.models.train_segments` and runs only where cuML and a
    GPU are present, which the test suite does not have.
    """
    from crmbet.models import bundle
    from crmbet.models.kselect import select_k
    from crmbet.models.segmentation import build_pipeline, check_matrix, order_clusters

    names = list(SEGMENTATION_FEATURES)
    X = features.select(names).cast(pl.Float64).to_numpy()  # noqa: N806
    check = check_matrix(X, names)
    Z = build_pipeline(names, 2, seed)[:-1].fit_transform(X)  # noqa: N806
    selection = None
    if k is None:
        selection = select_k(Z, k_range[0], k_range[1], seed=seed)
        k = selection.k
    centers = _as_numpy(fit_centers_on_gpu(Z, k, seed, backend, client))
    pipeline = build_pipeline(names, k, seed)
    pipeline.set_params(kmeans__init=centers, kmeans__n_init=1)
    pipeline.fit(X)
    order_clusters(pipeline, X)

    stub = bundle.SegmentModel(
        feature_names=names,
        pipeline=pipeline,
        profiles=[],
        population_medians={},
        k_selection=selection,
        metrics={},
        params={},
        as_of=as_of,
    )
    labels, _, _ = stub.assign(X)
    profiles, population = bundle._profiles(features, labels, k)
    metrics = bundle._quality(stub.scale(X), labels, seed)
    metrics.update(
        {
            "k": float(k),
            "n_players": float(X.shape[0]),
            "inertia": float(pipeline.named_steps["kmeans"].inertia_),
            "n_constant_features": float(len(check.constant_features)),
        }
    )
    params: dict[str, object] = {
        "k": k,
        "k_mode": "auto" if selection else "fixed",
        "k_range": f"{k_range[0]}-{k_range[1]}",
        "seed": seed,
        "features": ",".join(names),
        "constant_features": ",".join(check.constant_features) or "none",
    }
    model = bundle.SegmentModel(
        feature_names=names,
        pipeline=pipeline,
        profiles=profiles,
        population_medians=population,
        k_selection=selection,
        metrics=metrics,
        params=params,
        as_of=as_of,
    )
    logger.info(
        "trained %d segments on %d players with %s", k, X.shape[0], backend.name
    )
    return model, labels

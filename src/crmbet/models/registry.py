"""Model registry on MLflow: one bundle per trained model, versions and aliases.

A bundle is an MLflow pyfunc model whose artifacts are the pickled
:class:`~crmbet.models.bundle.SegmentModel`, its ONNX export, the segment
profiles and the feature schema. By default tracking and registry live in a
SQLite file under ``CRMBET_HOME``; ``CRMBET_MLFLOW_TRACKING_URI`` points them
at any MLflow server. The first registered version gets the alias
``champion``.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import joblib

from crmbet import __version__
from crmbet.config import Settings, configure_mlflow_environment, get_settings
from crmbet.errors import ModelNotFoundError
from crmbet.models.bundle import SegmentModel

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
EXPERIMENT = "crmbet-segmentation"

#: Requirements written into each bundle; listing them avoids MLflow's
#: requirement inference, which imports the model and takes seconds.
PIP_REQUIREMENTS = [
    f"crmbet=={__version__}",
    "numpy>=2.0",
    "polars>=1.20",
    "scikit-learn>=1.5",
    "onnxruntime>=1.18",
    "pandas>=2.2,<3",
]

_lock = threading.Lock()


#: Advice MLflow 3.17 prints as UserWarning while importing pyfunc and
#: logging a model; the bundle passes an explicit signature instead.
_MLFLOW_ADVICE = (
    ".*Any type hint is inferred",
    ".*input example was not provided",
)


class _DropPickleAdvice(logging.Filter):
    """Drop MLflow's advice against pickled models: the bundle is one by design.

    The pickle is crmbet's own :class:`SegmentModel`, written and read by the
    same package version. Loading any MLflow model runs its code, so models
    must come from a registry the operator controls.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "python_model" not in record.getMessage()


def redact_uri(uri: str) -> str:
    """Return ``uri`` without the user name and password it may carry."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    location, slash, path = rest.partition("/")
    if "@" in location:
        location = "***@" + location.rsplit("@", 1)[1]
    return f"{scheme}{sep}{location}{slash}{path}"


@contextmanager
def _quiet_mlflow() -> Iterator[None]:
    pyfunc_logger = logging.getLogger("mlflow.pyfunc")
    drop = _DropPickleAdvice()  # one per use, so nested uses stay filtered
    pyfunc_logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            for message in _MLFLOW_ADVICE:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        pyfunc_logger.removeFilter(drop)


def _import_pyfunc() -> Any:
    with _quiet_mlflow():
        import mlflow.pyfunc
    return mlflow.pyfunc


def _pyfunc_class() -> type:
    import pandas as pd

    mlflow_pyfunc = _import_pyfunc()

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN202
        frame = pd.DataFrame(model_input)
        for name in self.model.feature_names:
            if name not in frame.columns:
                frame[name] = float("nan")
        labels, confidence, _ = self.model.assign(
            frame[self.model.feature_names].to_numpy(dtype="float64")
        )
        names = [self.model.profiles[label].name for label in labels]
        return pd.DataFrame(
            {"cluster_id": labels, "segment": names, "confidence": confidence}
        )

    # MLflow 3 infers no schema from a DataFrame hint, and the bundle passes
    # an explicit signature. Without a hint MLflow prints advice on every
    # class definition, under a "once" filter of its own that the caller's
    # warning filters cannot override. The hint is set as an object because
    # this module's annotations are strings.
    predict.__annotations__ = {"model_input": pd.DataFrame}

    def load_context(self, context: Any) -> None:  # noqa: ANN001
        self.model = joblib.load(context.artifacts["bundle"])

    return type(
        "SegmentPyfunc",
        (mlflow_pyfunc.PythonModel,),
        {
            "__doc__": "MLflow pyfunc wrapper: features in, segment id, name "
            "and confidence out.",
            "__module__": __name__,
            "__qualname__": "SegmentPyfunc",
            "load_context": load_context,
            "predict": predict,
        },
    )


def _signature(model: SegmentModel) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema(
        [ColSpec("double", name, required=False) for name in model.feature_names]
    )
    outputs = Schema(
        [
            ColSpec("long", "cluster_id"),
            ColSpec("string", "segment"),
            ColSpec("double", "confidence"),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


class ModelRegistry:
    """Registers, lists and loads segmentation bundles in MLflow.

    Examples
    --------
    >>> registry = ModelRegistry(Settings(home="/tmp/crmbet-doc-registry"))
    >>> registry.model_name
    'crmbet-segments'
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.model_name = self.settings.model_name
        self._cache_dir = (self.settings.home / "model-cache").resolve()
        self._client: Any = None
        self._warm_up: threading.Thread | None = None

    def _mlflow(self) -> Any:
        configure_mlflow_environment(self.settings)
        _import_pyfunc()
        import mlflow

        with _lock:
            if self._client is None:
                self.settings.home.mkdir(parents=True, exist_ok=True)
                mlflow.set_tracking_uri(self.settings.registry_uri)
                mlflow.set_registry_uri(self.settings.registry_uri)
                if mlflow.get_experiment_by_name(EXPERIMENT) is None:
                    location = None
                    if self.settings.registry_uri.startswith("sqlite:"):
                        location = self.settings.artifact_root.as_uri()
                    mlflow.create_experiment(EXPERIMENT, artifact_location=location)
                self._client = mlflow.MlflowClient()
        return mlflow

    def warm_up(self) -> threading.Thread:
        """Start, in a daemon thread, the one-off work of the first registration.

        MLflow checks a bundle's requirements against the installed
        packages, and the first check in a process scans every installed
        distribution (0.48 s here). Run while the caller reads and folds
        events, which leave a core partly idle, the scan is cached when
        :meth:`register` needs it. A failure here only costs the time back.
        """

        def scan() -> None:
            try:
                self._mlflow()
                from mlflow.utils.requirements_utils import (
                    warn_dependency_requirement_mismatches,
                )

                warn_dependency_requirement_mismatches(PIP_REQUIREMENTS)
            except Exception:  # noqa: BLE001 - an optimisation only
                logger.debug("warming up the MLflow registry failed", exc_info=True)

        if self._warm_up is None:
            self._warm_up = threading.Thread(
                target=scan, name="crmbet-registry-warm-up", daemon=True
            )
            self._warm_up.start()
        return self._warm_up

    @property
    def client(self) -> Any:
        """The MLflow client bound to this registry's URI."""
        self._mlflow()
        return self._client

    def register(
        self,
        model: SegmentModel,
        *,
        onnx_bytes: bytes | None = None,
        extra_metrics: dict[str, float] | None = None,
        tags: dict[str, str] | None = None,
        run_name: str | None = None,
    ) -> str:
        """Log a trained model as a new registered version and return the version."""
        mlflow = self._mlflow()
        mlflow.set_experiment(EXPERIMENT)
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            model.name = self.model_name
            joblib.dump(model, root / "model.joblib")
            artifacts = {"bundle": str(root / "model.joblib")}
            (root / "profiles.json").write_text(
                json.dumps([p.to_dict() for p in model.profiles], indent=2)
            )
            artifacts["profiles"] = str(root / "profiles.json")
            (root / "schema.json").write_text(json.dumps(self._schema(model), indent=2))
            artifacts["schema"] = str(root / "schema.json")
            if onnx_bytes is not None:
                (root / "model.onnx").write_bytes(onnx_bytes)
                artifacts["onnx"] = str(root / "model.onnx")
            if model.k_selection is not None:
                (root / "k_selection.json").write_text(
                    json.dumps(model.k_selection.as_rows(), indent=2)
                )
                artifacts["k_selection"] = str(root / "k_selection.json")

            with mlflow.start_run(run_name=run_name) as run:
                mlflow.log_params(
                    {key: str(value)[:500] for key, value in model.params.items()}
                )
                metrics = dict(model.metrics) | dict(extra_metrics or {})
                mlflow.log_metrics(
                    {key: float(value) for key, value in metrics.items()}
                )
                mlflow.set_tags(
                    {
                        "feature_schema_version": str(model.feature_schema_version),
                        "state_schema_version": str(model.state_schema_version),
                        **(tags or {}),
                    }
                )
                with _quiet_mlflow():
                    info = mlflow.pyfunc.log_model(
                        name="model",
                        python_model=_pyfunc_class()(),
                        artifacts=artifacts,
                        pip_requirements=PIP_REQUIREMENTS,
                        signature=_signature(model),
                    )
                run_id = run.info.run_id
        client = self.client
        version = self._create_version(client, info, run_id)
        client.set_model_version_tag(self.model_name, version, "run_id", run_id)
        client.set_model_version_tag(
            self.model_name,
            version,
            "segments",
            ", ".join(p.name for p in model.profiles)[:5000],
        )
        if self.alias_version(CHAMPION) is None:
            client.set_registered_model_alias(self.model_name, CHAMPION, version)
            logger.info(
                "version %s of %s is the first and became %s",
                version,
                self.model_name,
                CHAMPION,
            )
        model.version = version
        logger.info(
            "registered %s version %s (run %s)", self.model_name, version, run_id
        )
        return version

    def _create_version(self, client: Any, info: Any, run_id: str) -> str:
        """Register the logged model as a new version, creating the name once.

        Done through the client rather than ``log_model``'s
        ``registered_model_name``, which prints to stderr on every call.
        """
        from mlflow.exceptions import MlflowException

        try:
            client.create_registered_model(self.model_name)
        except MlflowException as error:
            if error.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        created = client.create_model_version(
            name=self.model_name,
            source=info.model_uri,
            run_id=run_id,
            model_id=info.model_id,
        )
        return str(created.version)

    @staticmethod
    def _schema(model: SegmentModel) -> dict[str, object]:
        return {
            "features": model.feature_names,
            "event_schema_version": model.event_schema_version,
            "state_schema_version": model.state_schema_version,
            "feature_schema_version": model.feature_schema_version,
            "as_of": model.as_of,
            "trained_at": model.trained_at,
        }

    def alias_version(self, alias: str) -> str | None:
        """Return the version an alias points to, or None."""
        from mlflow.exceptions import MlflowException

        try:
            return str(
                self.client.get_model_version_by_alias(self.model_name, alias).version
            )
        except MlflowException:
            return None

    def set_alias(self, alias: str, version: str) -> None:
        """Point ``alias`` at ``version``."""
        self.client.set_registered_model_alias(self.model_name, alias, str(version))
        logger.info(
            "alias %s of %s now points to version %s", alias, self.model_name, version
        )

    def delete_alias(self, alias: str) -> None:
        """Remove ``alias`` if it exists."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.delete_registered_model_alias(self.model_name, alias)
        except MlflowException:
            return

    def resolve(self, ref: str = CHAMPION) -> str:
        """Return the version number for an alias or a version string."""
        if ref.isdigit():
            return ref
        version = self.alias_version(ref)
        if version is None:
            raise ModelNotFoundError(
                f"model {self.model_name!r} has no version with alias {ref!r}; "
                "train one with 'crmbet train' or pass a version number"
            )
        return version

    def _download(self, version: str) -> Path:
        target = self._cache_dir / self.model_name / version
        if (target / "done").exists():
            return target
        mlflow = self._mlflow()
        from mlflow.exceptions import MlflowException

        staging = Path(
            tempfile.mkdtemp(
                dir=self._cache_dir.parent if self._cache_dir.parent.exists() else None
            )
        )
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{self.model_name}/{version}",
                dst_path=str(staging),
            )
        except MlflowException as error:
            shutil.rmtree(staging, ignore_errors=True)
            # The registry's location and MLflow's message stay in the log:
            # this error reaches HTTP clients, who must not learn file paths
            # or server addresses.
            logger.debug(
                "cannot download version %s of %s from %s: %s",
                version,
                self.model_name,
                redact_uri(self.settings.registry_uri),
                error,
            )
            raise ModelNotFoundError(
                f"version {version} of model {self.model_name!r} is not in the "
                "registry; 'crmbet segments' shows the champion, 'crmbet train' "
                "registers a new version"
            ) from error
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        shutil.move(local, target)
        shutil.rmtree(staging, ignore_errors=True)
        (target / "done").write_text("ok")
        return target

    def load(self, ref: str = CHAMPION) -> SegmentModel:
        """Load a registered model by alias or version number."""
        version = self.resolve(ref)
        folder = self._download(version)
        model: SegmentModel = joblib.load(folder / "artifacts" / "model.joblib")
        model.version = version
        return model

    def load_onnx(self, ref: str = CHAMPION) -> bytes:
        """Return the ONNX export of a registered model."""
        folder = self._download(self.resolve(ref))
        path = folder / "artifacts" / "model.onnx"
        if not path.exists():
            raise ModelNotFoundError(
                f"version {ref} of {self.model_name!r} has no ONNX export"
            )
        return path.read_bytes()

    def versions(self) -> list[dict[str, object]]:
        """Return every registered version, newest first, with aliases and metrics."""
        from mlflow.exceptions import MlflowException

        client = self.client
        try:
            found = client.search_model_versions(f"name='{self.model_name}'")
        except MlflowException:
            return []
        aliases: dict[str, list[str]] = {}
        try:
            for alias, version in client.get_registered_model(
                self.model_name
            ).aliases.items():
                aliases.setdefault(str(version), []).append(alias)
        except MlflowException:
            pass
        rows = []
        for item in sorted(found, key=lambda v: int(v.version), reverse=True):
            run_id = item.run_id or item.tags.get("run_id")
            metrics = client.get_run(run_id).data.metrics if run_id else {}
            rows.append(
                {
                    "version": str(item.version),
                    "aliases": aliases.get(str(item.version), []),
                    "created": item.creation_timestamp,
                    "segments": item.tags.get("segments", ""),
                    "metrics": metrics,
                }
            )
        return rows

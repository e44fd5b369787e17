"""The main job: transactions in, a registered segmentation model out.

``run_training`` reads a source, validates and pseudonymises it, and folds
the events into player states with Polars. It then computes the features,
chooses k, trains, and exports to ONNX (checked against scikit-learn). Last,
it registers the bundle in MLflow and returns everything a caller shows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.metrics import adjusted_rand_score

from crmbet.config import Settings, get_settings
from crmbet.events.adapters import (
    IngestResult,
    SourceFormat,
    ingest,
    ingest_raw_ids,
    write_dead_letters,
)
from crmbet.events.pseudonym import Pseudonymizer
from crmbet.events.validation import ColumnMapping
from crmbet.features.definitions import compute_features
from crmbet.features.state import fold, fold_with_first_rows
from crmbet.models.bundle import SegmentModel, train_segments
from crmbet.models.onnx_export import check_onnx_labels, export_onnx
from crmbet.models.registry import ModelRegistry

logger = logging.getLogger(__name__)

Progress = Callable[[str, int], None]

#: Source columns carried beside the events but never used as features.
GROUND_TRUTH_COLUMN = "archetype"


@dataclass
class TrainingResult:
    """Outputs of one training run: model, version, states, features, labels."""

    model: SegmentModel
    version: str | None
    states: pl.DataFrame
    features: pl.DataFrame
    labels: np.ndarray
    n_events: int
    n_dead_letters: int
    onnx_mismatches: int | None
    onnx_bytes: bytes | None
    adjusted_rand_index: float | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def assignments(self) -> pl.DataFrame:
        """Return each player's segment id and name."""
        names = [p.name for p in self.model.profiles]
        return pl.DataFrame(
            {
                "player_id": self.features["player_id"],
                "cluster_id": self.labels,
                "segment": [names[label] for label in self.labels],
            }
        )


def pseudonymizer_from(settings: Settings) -> Pseudonymizer:
    """Build the pseudonymizer with the configured key."""
    return Pseudonymizer(settings.pseudonym_key_bytes())


#: Model parameter holding the fingerprint of the key its players were
#: pseudonymised with.
KEY_FINGERPRINT_PARAM = "pseudonym_key_fingerprint"


def key_mismatch(model: SegmentModel, pseudonymizer: Pseudonymizer) -> str | None:
    """Return a warning when ``model`` was trained under another key, else None.

    Player ids then map to other pseudonyms than the stored ones, so every
    known player would be served as a new one.
    """
    trained = model.params.get(KEY_FINGERPRINT_PARAM)
    if trained is None or trained == pseudonymizer.fingerprint:
        return None
    return (
        f"model version {model.version} was trained with another "
        f"pseudonymisation key (fingerprint {trained}, this process "
        f"{pseudonymizer.fingerprint}): known players will look new; set "
        "CRMBET_PSEUDONYM_KEY to the key the model was trained with"
    )


class RecordingPseudonymizer(Pseudonymizer):
    """A pseudonymizer that keeps every raw id it maps, for results sent back.

    Batch predictions go back to the operator's CRM, which identifies its
    players by their raw ids. :meth:`id_table` returns the pairs seen so far,
    so those results can carry the raw id next to the pseudonym. Nothing else
    keeps the raw id.
    """

    def __init__(self, key: bytes) -> None:
        super().__init__(key)
        self._tables: list[pl.DataFrame] = []

    def lookup_table(self, raw_ids: pl.Series) -> pl.DataFrame:
        table = super().lookup_table(raw_ids)
        self._tables.append(
            table.select(
                pl.col("raw_id").cast(pl.String).alias("source_player_id"),
                pl.col("pseudonym").alias("player_id"),
            )
        )
        return table

    def id_table(self) -> pl.DataFrame:
        """Return ``source_player_id`` and ``player_id`` of every id mapped."""
        if not self._tables:
            return pl.DataFrame(
                schema={"source_player_id": pl.String, "player_id": pl.String}
            )
        return pl.concat(self._tables).unique("player_id", keep="first")


def read_source(
    path: str | Path,
    *,
    settings: Settings | None = None,
    source_format: SourceFormat = "auto",
    mapping: ColumnMapping | None = None,
    pseudonymizer: Pseudonymizer | None = None,
    free_text: bool = True,
) -> IngestResult:
    """Read, validate and pseudonymise a source; dead letters go under ``home``.

    ``pseudonymizer`` replaces the one built from ``settings``; pass a
    :class:`RecordingPseudonymizer` to keep the raw ids for the results.
    With ``free_text=False`` the events' free-text fields are left null.
    """
    settings = settings or get_settings()
    result = ingest(
        path,
        pseudonymizer=pseudonymizer or pseudonymizer_from(settings),
        source_format=source_format,
        mapping=mapping,
        keep_columns=(GROUND_TRUTH_COLUMN,),
        free_text=free_text,
    )
    _keep_dead_letters(result, path, settings)
    return result


def _keep_dead_letters(
    result: IngestResult, path: str | Path, settings: Settings
) -> None:
    """Write a source's dead letters under ``home``, if there are any."""
    if result.dead_letters.height:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = settings.home / "dead_letters" / f"{Path(path).name}-{stamp}.jsonl"
        write_dead_letters(result.dead_letters, target)


def player_truth(
    events: pl.DataFrame, extra: pl.DataFrame | None
) -> pl.DataFrame | None:
    """Return each player's ground-truth label from a column carried with the events."""
    if extra is None or GROUND_TRUTH_COLUMN not in extra.columns:
        return None
    if extra.height == events.height and extra["event_id"].equals(events["event_id"]):
        # ingest returns the carried columns row for row with the events,
        # which saves a join on the event id, and each player's first row
        # is found without grouping the rows.
        first_rows = events["player_id"].arg_unique()
        return pl.DataFrame(
            [
                events["player_id"].gather(first_rows),
                extra[GROUND_TRUTH_COLUMN].gather(first_rows),
            ]
        )
    labelled = events.select("event_id", "player_id").join(
        extra, on="event_id", maintain_order="left"
    )
    return labelled.group_by("player_id", maintain_order=True).agg(
        pl.col(GROUND_TRUTH_COLUMN).first()
    )


def ground_truth_ari(
    truth: pl.DataFrame | None, assignments: pl.DataFrame
) -> float | None:
    """Score segments against each player's ground-truth label."""
    if truth is None:
        return None
    joined = assignments.join(truth, on="player_id")
    if joined.height == 0:
        return None
    return float(adjusted_rand_score(joined[GROUND_TRUTH_COLUMN], joined["cluster_id"]))


def _pseudonymize_states(
    states: pl.DataFrame,
    truth: pl.DataFrame | None,
    events: pl.DataFrame,
    pseudonymizer: Pseudonymizer,
) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """Replace the raw player ids of folded states and of ``truth`` by pseudonyms.

    The states come back sorted by pseudonym, as :func:`fold` sorts them.
    Should two raw ids share a pseudonym (80-bit digests make that
    vanishingly rare), the events are pseudonymised and folded again, so
    that the two players' events fold into one state as they would have.
    """
    lookup = pseudonymizer.lookup_table(states["player_id"])
    pseudonyms = lookup["pseudonym"]
    if pseudonyms.n_unique() < pseudonyms.len():
        logger.warning(
            "two raw player ids share a pseudonym; folding pseudonymised events"
        )
        states = fold(pseudonymizer.pseudonymize_column(events))
    else:
        states = states.with_columns(pseudonyms.alias("player_id")).sort("player_id")
    if truth is not None:
        truth = truth.join(
            lookup.rename({"raw_id": "player_id"}), on="player_id", how="inner"
        ).select(pl.col("pseudonym").alias("player_id"), GROUND_TRUTH_COLUMN)
        truth = truth.unique("player_id", keep="first", maintain_order=True)
    return states, truth


def train_from_events(
    events: pl.DataFrame,
    *,
    settings: Settings | None = None,
    k: int | None = None,
    k_range: tuple[int, int] = (3, 12),
    seed: int = 0,
    register: bool = True,
    registry: ModelRegistry | None = None,
    progress: Progress | None = None,
    extra: pl.DataFrame | None = None,
    truth: pl.DataFrame | None = None,
    n_dead_letters: int = 0,
    pseudonymizer: Pseudonymizer | None = None,
    labels: pl.Series | None = None,
    key_fingerprint: str | None = None,
) -> TrainingResult:
    """Train and register a model from canonical, pseudonymised events.

    ``extra`` (event id and ground-truth column), ``truth`` (player id and
    ground-truth column) or ``labels`` (the ground-truth column, row for
    row with ``events``) lets the run score its segments; none enters the
    features. With ``pseudonymizer`` the events (and ``truth``) carry
    raw player ids instead: they are folded as they are, and the player
    states and ``truth`` are pseudonymised, one row per player instead of
    one per event. ``key_fingerprint`` (taken from ``pseudonymizer`` when
    given) is kept in the model's parameters, so that a process using
    another key can warn that it will not find the trained players.
    """
    settings = settings or get_settings()
    if pseudonymizer is not None:
        key_fingerprint = pseudonymizer.fingerprint
    if register:
        registry = registry or ModelRegistry(settings)
        registry.warm_up()
    if truth is None and labels is None:
        truth = player_truth(events, extra)
    timings: dict[str, float] = {}

    def step(name: str) -> None:
        timings[name] = time.perf_counter()
        if progress:
            progress(name, 1)

    clock = time.perf_counter()
    if labels is not None:
        # Each player's label is read at the row the fold found first for
        # them, which saves grouping the events a second time.
        states, first_rows = fold_with_first_rows(events)
        truth = pl.DataFrame(
            [states["player_id"], labels.gather(first_rows).alias(GROUND_TRUTH_COLUMN)]
        )
    else:
        states = fold(events)
    if pseudonymizer is not None:
        states, truth = _pseudonymize_states(states, truth, events, pseudonymizer)
    timings["fold_s"] = time.perf_counter() - clock
    step("fold")

    clock = time.perf_counter()
    features = compute_features(states)
    as_of = float(states["last_ts"].max()) if states.height else 0.0
    timings["features_s"] = time.perf_counter() - clock
    step("features")

    clock = time.perf_counter()
    model, labels = train_segments(
        features, k=k, k_range=k_range, seed=seed, as_of=as_of, progress=progress
    )
    timings["train_s"] = time.perf_counter() - clock
    if key_fingerprint is not None:
        model.params[KEY_FINGERPRINT_PARAM] = key_fingerprint

    clock = time.perf_counter()
    onnx_bytes = export_onnx(model.pipeline, len(model.feature_names))
    matrix = model.matrix(features)
    mismatches = check_onnx_labels(onnx_bytes, model.pipeline, matrix)
    timings["onnx_s"] = time.perf_counter() - clock
    step("onnx")

    result = TrainingResult(
        model=model,
        version=None,
        states=states,
        features=features,
        labels=labels,
        n_events=events.height,
        n_dead_letters=n_dead_letters,
        onnx_mismatches=mismatches,
        onnx_bytes=onnx_bytes,
        timings=timings,
    )
    result.adjusted_rand_index = ground_truth_ari(truth, result.assignments())
    extra_metrics = {
        "onnx_label_mismatches": float(mismatches),
        "n_events": float(events.height),
        "n_dead_letters": float(n_dead_letters),
    }
    if result.adjusted_rand_index is not None:
        extra_metrics["adjusted_rand_index"] = result.adjusted_rand_index

    if register:
        clock = time.perf_counter()
        assert registry is not None  # created above when register is set
        result.version = registry.register(
            model, onnx_bytes=onnx_bytes, extra_metrics=extra_metrics
        )
        timings["register_s"] = time.perf_counter() - clock
        step("register")
    model.metrics.update(extra_metrics)
    return result


def run_training(
    path: str | Path,
    *,
    settings: Settings | None = None,
    source_format: SourceFormat = "auto",
    mapping: ColumnMapping | None = None,
    k: int | None = None,
    k_range: tuple[int, int] = (3, 12),
    seed: int = 0,
    register: bool = True,
    progress: Progress | None = None,
) -> TrainingResult:
    """Run the main job on a file: read, fold, train, export and register."""
    settings = settings or get_settings()
    # Built first, so that a missing production key stops the job before
    # the whole source is read.
    pseudonymizer = pseudonymizer_from(settings)
    registry = ModelRegistry(settings) if register else None
    if registry is not None:
        registry.warm_up()  # overlaps MLflow's first-use work with the read
    clock = time.perf_counter()
    # The fold reads no free-text field, so those fields are not cleaned.
    # The player ids stay raw until the fold, whose states are then
    # pseudonymised: one row per player, not one per event.
    ingested = ingest_raw_ids(
        path,
        source_format=source_format,
        mapping=mapping,
        keep_columns=(GROUND_TRUTH_COLUMN,),
        free_text=False,
    )
    _keep_dead_letters(ingested, path, settings)
    read_s = time.perf_counter() - clock
    if progress:
        progress("read", 1)
    extra = ingested.extra
    labels = truth = None
    if (
        extra is not None
        and GROUND_TRUTH_COLUMN in extra.columns
        and extra.height == ingested.events.height
        and extra["event_id"].equals(ingested.events["event_id"])
    ):
        labels = extra[GROUND_TRUTH_COLUMN]  # row for row with the events
    else:
        truth = player_truth(ingested.events, extra)
    # The fold reads neither the free-text columns nor the carried ones, so
    # drop them before it to keep peak memory down.
    events = ingested.events.drop("game", "session_id", "channel")
    dead_letters = ingested.dead_letters.height
    del ingested
    result = train_from_events(
        events,
        settings=settings,
        k=k,
        k_range=k_range,
        seed=seed,
        register=register,
        progress=progress,
        truth=truth,
        labels=labels,
        n_dead_letters=dead_letters,
        pseudonymizer=pseudonymizer,
        registry=registry,
    )
    result.timings["read_s"] = read_s
    return result

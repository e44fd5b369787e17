"""The main job on the real bustabit bets, through the MLflow registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from crmbet.config import Settings
from crmbet.events import Pseudonymizer
from crmbet.features import fold
from crmbet.models.registry import CHAMPION, ModelRegistry
from crmbet.serving.predictor import SegmentPredictor
from crmbet.training import (
    TrainingResult,
    _pseudonymize_states,
    player_truth,
    train_from_events,
)

pytestmark = pytest.mark.integration

# Checked by hand on the bundled file with the test key and seed 0: the eight
# segments below, whose traits were confirmed against independent group-bys
# (see the two tests after this one).
EXPECTED_SEGMENTS = [
    ("High Roller", 724),
    ("Recently Active", 642),
    ("Frequent Player", 637),
    ("Early Cash-Out", 599),
    ("Weekend Warrior", 472),
    ("Night Owl", 427),
    ("Regular", 406),
    ("High-Multiplier Chaser", 240),
]


@pytest.fixture(scope="module")
def trained(
    bustabit_events: pl.DataFrame, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainingResult, Settings]:
    settings = Settings(home=tmp_path_factory.mktemp("home"))
    return train_from_events(bustabit_events, settings=settings, seed=0), settings


def test_bustabit_segments_match_hand_check(
    trained: tuple[TrainingResult, Settings],
) -> None:
    result, _ = trained
    found = [(p.name, p.size) for p in result.model.profiles]
    assert found == EXPECTED_SEGMENTS
    assert sum(size for _, size in found) == 4_147


def test_night_owls_bet_at_night(trained: tuple[TrainingResult, Settings]) -> None:
    result, _ = trained
    features = result.features.with_columns(pl.Series("segment", result.labels))
    night = next(p.cluster_id for p in result.model.profiles if p.name == "Night Owl")
    owls = features.filter(pl.col("segment") == night)
    assert (owls["late_night_share"] >= 0.5).mean() > 0.9
    all_night = features.filter(pl.col("late_night_share") == 1.0)
    assert all_night.height == 368
    assert (all_night["segment"] == night).mean() > 0.85


def test_weekend_warriors_bet_at_weekends(
    trained: tuple[TrainingResult, Settings],
) -> None:
    result, _ = trained
    features = result.features.with_columns(pl.Series("segment", result.labels))
    weekend = next(
        p.cluster_id for p in result.model.profiles if p.name == "Weekend Warrior"
    )
    members = features.filter(pl.col("segment") == weekend)
    assert (members["weekend_share"] >= 0.5).mean() > 0.9


def test_first_version_is_champion(trained: tuple[TrainingResult, Settings]) -> None:
    result, settings = trained
    registry = ModelRegistry(settings)
    assert result.version == "1"
    assert registry.alias_version(CHAMPION) == "1"
    [row] = registry.versions()
    assert row["aliases"] == [CHAMPION]
    assert row["metrics"]["onnx_label_mismatches"] == 0.0
    assert row["metrics"]["k"] == 8.0


def test_registered_bundle_predicts_like_trained(
    trained: tuple[TrainingResult, Settings],
) -> None:
    result, settings = trained
    registry = ModelRegistry(settings)
    loaded = registry.load(CHAMPION)
    assert loaded.version == "1"
    matrix = result.model.matrix(result.features)
    assert np.array_equal(loaded.assign(matrix)[0], result.labels)
    onnx = registry.load_onnx("1")
    assert onnx == result.onnx_bytes


def test_second_version_keeps_champion(
    trained: tuple[TrainingResult, Settings], bustabit_events: pl.DataFrame
) -> None:
    _, settings = trained
    second = train_from_events(bustabit_events.head(20_000), settings=settings, k=4)
    registry = ModelRegistry(settings)
    assert second.version == "2"
    assert registry.alias_version(CHAMPION) == "1"
    assert SegmentPredictor.from_registry(registry, "2").version == "2"


def test_predict_every_player(trained: tuple[TrainingResult, Settings]) -> None:
    result, _ = trained
    batch = SegmentPredictor(result.model).predict_batch(result.features)
    table = batch.to_polars()
    assert table.height == 4_147
    assert table["segment"].n_unique() == 8
    assert (table["confidence"].is_between(0, 1)).all()
    # The file a CRM receives carries the campaigns to offer and why a player
    # gets no promotion.
    promotions = {
        c.id
        for profile in result.model.profiles
        for c in profile.campaigns
        if c.promotion
    }
    flagged = table.filter(pl.col("responsible_gambling_flag"))
    assert flagged.height > 0
    assert (flagged["responsible_gambling_reasons"] != "").all()
    for offered in flagged["campaigns"].to_list():
        assert not promotions & set(offered.split(","))
    unflagged = table.filter(~pl.col("responsible_gambling_flag"))
    assert (unflagged["responsible_gambling_reasons"] == "").all()
    expected = {
        profile.name: ",".join(c.id for c in profile.campaigns)
        for profile in result.model.profiles
    }
    first = unflagged.row(0, named=True)
    assert first["campaigns"] == expected[first["segment"]]


@pytest.mark.slow
def test_synthetic_archetypes_are_recovered(
    tmp_path_factory: pytest.TempPathFactory, pseudonymizer
) -> None:
    from crmbet.events import ingest_frame
    from crmbet.events.synthetic import generate_transactions

    raw = generate_transactions(players=50_000, days=30, seed=1)
    events = ingest_frame(raw, pseudonymizer=pseudonymizer).events
    settings = Settings(home=tmp_path_factory.mktemp("synthetic"))
    result = train_from_events(
        events,
        settings=settings,
        register=False,
        extra=raw.select("event_id", "archetype"),
    )
    assert result.adjusted_rand_index is not None
    assert result.adjusted_rand_index >= 0.6
    assert 6 <= result.model.n_segments <= 12


def test_player_truth_aligned_equals_joined() -> None:
    events = pl.DataFrame(
        {
            "event_id": ["e1", "e2", "e3", "e4"],
            "player_id": ["p_b", "p_a", "p_b", "p_c"],
        }
    )
    extra = pl.DataFrame(
        {"event_id": ["e1", "e2", "e3", "e4"], "archetype": ["x", "y", "z", "x"]}
    )
    aligned = player_truth(events, extra)
    joined = player_truth(events, extra.reverse())
    assert aligned is not None
    assert joined is not None
    expected = [("p_a", "y"), ("p_b", "x"), ("p_c", "x")]
    assert aligned.sort("player_id").rows() == expected
    assert joined.sort("player_id").rows() == aligned.sort("player_id").rows()


def test_labels_row_for_row_score_like_carried_columns(
    bustabit_events: pl.DataFrame, tmp_path: Path
) -> None:
    events = bustabit_events.head(5_000)
    players = events["player_id"].unique().sort()
    label_of = {player: f"g{i % 3}" for i, player in enumerate(players)}
    labels = events["player_id"].replace_strict(label_of).alias("archetype")
    settings = Settings(home=tmp_path)
    by_labels = train_from_events(
        events, settings=settings, register=False, k=3, labels=labels
    )
    by_extra = train_from_events(
        events,
        settings=settings,
        register=False,
        k=3,
        extra=pl.DataFrame([events["event_id"], labels]),
    )
    assert by_labels.adjusted_rand_index is not None
    assert by_labels.adjusted_rand_index == by_extra.adjusted_rand_index


def test_key_mismatch_names_both_fingerprints(
    bustabit_events: pl.DataFrame, tmp_path: Path
) -> None:
    from crmbet.training import KEY_FINGERPRINT_PARAM, key_mismatch

    used = Pseudonymizer(b"training-key-" + b"x" * 32)
    result = train_from_events(
        bustabit_events.head(3_000),
        settings=Settings(home=tmp_path),
        register=False,
        k=3,
        key_fingerprint=used.fingerprint,
    )
    assert result.model.params[KEY_FINGERPRINT_PARAM] == used.fingerprint
    assert key_mismatch(result.model, used) is None
    message = key_mismatch(result.model, Pseudonymizer(b"another-key-" + b"y" * 32))
    assert message is not None
    assert "trained with another pseudonymisation key" in message
    assert used.fingerprint in message


class _OnePseudonym(Pseudonymizer):
    """Maps every raw id to the same pseudonym, as a collision would."""

    def lookup_table(self, raw_ids: pl.Series) -> pl.DataFrame:
        return pl.DataFrame(
            {"raw_id": raw_ids, "pseudonym": ["p_same"] * raw_ids.len()}
        )


def test_colliding_pseudonyms_fold_into_one_state(
    bustabit_events: pl.DataFrame,
) -> None:
    events = bustabit_events.head(300)
    truth = events.group_by("player_id").agg(pl.lit("x").alias("archetype"))
    states, mapped = _pseudonymize_states(
        fold(events), truth, events, _OnePseudonym(b"k")
    )
    assert states["player_id"].to_list() == ["p_same"]
    assert states["n_events"][0] == fold(events)["n_events"].sum()
    assert mapped is not None
    assert mapped.rows() == [("p_same", "x")]


def test_raw_id_fold_matches_pseudonymised_fold(
    bustabit_events: pl.DataFrame, pseudonymizer
) -> None:
    states, _ = _pseudonymize_states(
        fold(bustabit_events), None, bustabit_events, pseudonymizer
    )
    expected = fold(pseudonymizer.pseudonymize_column(bustabit_events))
    assert states.equals(expected)

"""Both inference paths agree with scikit-learn and with the predictor."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from crmbet.features.definitions import compute_features
from crmbet.features.state import fold
from crmbet.models import train_segments
from crmbet.models.onnx_export import export_onnx
from crmbet.serving.engine import NumpyEngine, OnnxEngine, ServingModel, choose_engine
from crmbet.serving.predictor import SegmentPredictor


@pytest.fixture(scope="module")
def fitted(bustabit_events: pl.DataFrame) -> tuple:
    features = compute_features(fold(bustabit_events))
    model, _ = train_segments(features, k=6)
    return model, features, export_onnx(model.pipeline, len(model.feature_names))


def test_engines_agree_with_sklearn(fitted: tuple) -> None:
    model, features, onnx_bytes = fitted
    X = model.matrix(features)
    X[::7, 0] = np.nan
    expected = model.pipeline.predict(X)
    numpy_labels, numpy_conf = NumpyEngine(model).assign(X)
    onnx_labels, onnx_conf = OnnxEngine(onnx_bytes).assign(X)
    assert (numpy_labels == expected).all()
    assert (onnx_labels == expected).all()
    np.testing.assert_allclose(onnx_conf, numpy_conf, atol=1e-9)


def test_choose_engine_by_preference(fitted: tuple) -> None:
    model, _, onnx_bytes = fitted
    assert choose_engine(model, onnx_bytes, "numpy").name == "numpy"
    assert choose_engine(model, onnx_bytes, "onnx").name == "onnx"
    assert choose_engine(model, None, "auto").name == "numpy"
    assert choose_engine(model, onnx_bytes, "auto").name in ("numpy", "onnx")
    with pytest.raises(ValueError, match="no ONNX export"):
        choose_engine(model, None, "onnx")


@pytest.mark.parametrize("engine", ["numpy", "onnx"])
def test_answers_match_predictor(fitted: tuple, engine: str) -> None:
    model, features, onnx_bytes = fitted
    serving = ServingModel(model, choose_engine(model, onnx_bytes, engine))  # type: ignore[arg-type]
    rows = features.select(serving.needed).to_numpy()
    answers = serving.answers(serving.score(rows), features["player_id"].to_list())
    predictor = SegmentPredictor(model)
    for index in range(0, features.height, 97):
        record = dict(zip(serving.needed, rows[index].tolist(), strict=True))
        expected = predictor.predict_features(record).to_dict()
        answer = answers[index]
        for key in (
            "cluster_id",
            "segment",
            "campaign_recommendations",
            "risk",
            "responsible_gambling_flag",
            "responsible_gambling_reasons",
            "recommendation_note",
        ):
            assert answer[key] == expected[key], key
        assert answer["confidence"] == pytest.approx(expected["confidence"])

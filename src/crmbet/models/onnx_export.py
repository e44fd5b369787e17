"""ONNX export of the segmentation pipeline, checked against scikit-learn.

skl2onnx converts the imputer, the scaler and k-means; the heavy-tail step
gets a small converter here, ``x + mask * (sign(x) * ln(1 + |x|) - x)``,
built from standard ONNX operators. The graph runs in float64 so that its
labels match scikit-learn's exactly.
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline

from crmbet.models.segmentation import HeavyTailTransformer

logger = logging.getLogger(__name__)

ONNX_OPSET = 17
_registered = False


def _shape_calculator(operator) -> None:  # noqa: ANN001
    input_type = operator.inputs[0].type
    operator.outputs[0].type = input_type.__class__(input_type.shape)


def _converter(scope, operator, container) -> None:  # noqa: ANN001
    from skl2onnx.algebra.onnx_ops import (
        OnnxAbs,
        OnnxAdd,
        OnnxLog,
        OnnxMul,
        OnnxSign,
        OnnxSub,
    )
    from skl2onnx.proto import onnx_proto

    transformer: HeavyTailTransformer = operator.raw_operator
    opv = container.target_opset
    is_double = operator.inputs[0].type.to_onnx_type().tensor_type.elem_type == (
        onnx_proto.TensorProto.DOUBLE
    )
    dtype = np.float64 if is_double else np.float32
    x = operator.inputs[0]
    mask = transformer.log_mask_.astype(dtype)[None, :]
    one = np.array([1.0], dtype=dtype)
    logged = OnnxMul(
        OnnxSign(x, op_version=opv),
        OnnxLog(
            OnnxAdd(OnnxAbs(x, op_version=opv), one, op_version=opv), op_version=opv
        ),
        op_version=opv,
    )
    delta = OnnxMul(OnnxSub(logged, x, op_version=opv), mask, op_version=opv)
    result = OnnxAdd(x, delta, op_version=opv, output_names=operator.outputs[:1])
    result.add_to(scope, container)


def _imputer_converter(scope, operator, container) -> None:  # noqa: ANN001
    from skl2onnx.algebra.onnx_ops import OnnxIsNaN, OnnxWhere

    # ONNX Runtime has no float64 kernel for ai.onnx.ml.Imputer, so missing
    # values are filled with standard operators instead.
    opv = container.target_opset
    x = operator.inputs[0]
    fill = np.asarray(operator.raw_operator.statistics_, dtype=np.float64)[None, :]
    result = OnnxWhere(
        OnnxIsNaN(x, op_version=opv),
        fill,
        x,
        op_version=opv,
        output_names=operator.outputs[:1],
    )
    result.add_to(scope, container)


def _register() -> None:
    global _registered
    if _registered:
        return
    from skl2onnx import update_registered_converter

    update_registered_converter(
        HeavyTailTransformer,
        "CrmbetHeavyTailTransformer",
        _shape_calculator,
        _converter,
    )
    update_registered_converter(
        SimpleImputer,
        "SklearnImputer",
        _shape_calculator,
        _imputer_converter,
        overwrite=True,
    )
    _registered = True


def export_onnx(pipeline: Pipeline, n_features: int) -> bytes:
    """Convert a fitted segmentation pipeline to a serialised ONNX model."""
    _register()
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType

    model = convert_sklearn(
        pipeline,
        initial_types=[("features", DoubleTensorType([None, n_features]))],
        target_opset={"": ONNX_OPSET, "ai.onnx.ml": 3},
    )
    return model.SerializeToString()


class OnnxSegmenter:
    """Runs an exported model with ONNX Runtime and returns segment labels."""

    def __init__(self, model_bytes: bytes, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        self._label = self._session.get_outputs()[0].name

    def predict(self, X: np.ndarray) -> np.ndarray:  # noqa: N803
        """Return the segment label of each row."""
        labels = self._session.run(
            [self._label], {self._input: np.asarray(X, np.float64)}
        )[0]
        return np.asarray(labels, dtype=np.int64).ravel()


def check_onnx_labels(model_bytes: bytes, pipeline: Pipeline, X: np.ndarray) -> int:  # noqa: N803
    """Return how many rows of ``X`` ONNX labels differently from scikit-learn."""
    expected = pipeline.predict(X)
    actual = OnnxSegmenter(model_bytes).predict(X)
    mismatches = int((expected != actual).sum())
    if mismatches:
        logger.warning(
            "ONNX export disagrees with scikit-learn on %d of %d rows",
            mismatches,
            X.shape[0],
        )
    return mismatches

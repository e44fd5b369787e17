"""Request and response bodies of the HTTP API (pydantic models, shown in /docs)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from crmbet.features.definitions import FEATURES
from crmbet.serving.value_checks import value_problem

#: Longest accepted raw player id, in characters.
MAX_PLAYER_ID_LENGTH = 256


_FEATURE_NAMES = frozenset(FEATURES)


def _check_feature_names(names: list[str]) -> None:
    if _FEATURE_NAMES.issuperset(names):
        return
    unknown = sorted(name for name in names if name not in FEATURES)
    if unknown:
        raise ValueError(
            f"unknown feature(s) {unknown[:10]}; valid names are listed by "
            "'crmbet features list' and GET /v2/models/{name}"
        )


class PredictionRequest(BaseModel):
    """One player to predict; features absent here come from the feature store."""

    model_config = ConfigDict(extra="forbid")

    player_id: str = Field(
        min_length=1,
        max_length=MAX_PLAYER_ID_LENGTH,
        description="The operator's raw player id; it is pseudonymised "
        "before any lookup and never logged.",
    )
    features: dict[str, float | None] | None = Field(
        default=None, description="Feature name to value; null values count as missing."
    )

    @field_validator("features", mode="before")
    @classmethod
    def _no_booleans(cls, value: object) -> object:
        if isinstance(value, dict):
            flags = sorted(name for name, x in value.items() if isinstance(x, bool))
            if flags:
                raise ValueError(
                    f"feature(s) {flags[:10]} are true or false; send numbers"
                )
        return value

    @field_validator("features")
    @classmethod
    def _known_features(cls, value: dict[str, float | None] | None) -> object:
        if value:
            _check_feature_names(list(value))
            problems = [
                problem
                for name, x in value.items()
                if x is not None and (problem := value_problem(name, x)) is not None
            ]
            if problems:
                raise ValueError("; ".join(problems[:10]))
        return value


class BatchPredictionRequest(BaseModel):
    """Many players, with their features in one of two layouts.

    ``features`` maps each feature name to one value per player.
    ``feature_names`` with ``rows`` gives one row of values per player, in
    the order of ``feature_names``. Both layouts may be left out, and then
    every player's features come from the feature store.
    """

    model_config = ConfigDict(extra="forbid")

    player_ids: list[
        Annotated[str, StringConstraints(min_length=1, max_length=MAX_PLAYER_ID_LENGTH)]
    ] = Field(min_length=1, description="Raw player ids.")
    features: dict[str, list[float | None]] | None = Field(
        default=None,
        description="Feature name to one value per player (null for missing), in the "
        "order of player_ids.",
    )
    feature_names: list[str] | None = Field(
        default=None,
        description="Names of the values in each of rows; give with rows, "
        "instead of features.",
    )
    rows: list[list[float | None]] | None = Field(
        default=None,
        description="One row per player, in the order of player_ids, with one value "
        "(null for missing) per name of feature_names.",
    )
    format: Literal["rows", "columns"] = Field(
        default="rows",
        description="'rows' returns one object per player; 'columns' returns one list "
        "per field and the campaigns once per segment, which is much faster to encode.",
    )

    @field_validator("features")
    @classmethod
    def _known_features(cls, value: dict[str, list[float | None]] | None) -> object:
        if value:
            _check_feature_names(list(value))
        return value

    @field_validator("feature_names")
    @classmethod
    def _known_unique_names(cls, value: list[str] | None) -> object:
        if value:
            _check_feature_names(value)
            repeated = sorted({name for name in value if value.count(name) > 1})
            if repeated:
                raise ValueError(f"feature(s) {repeated} appear more than once")
        return value

    @model_validator(mode="after")
    def _one_layout(self) -> BatchPredictionRequest:
        if self.features is not None and (
            self.feature_names is not None or self.rows is not None
        ):
            raise ValueError(
                "give features, or feature_names with rows, but not both layouts"
            )
        if (self.feature_names is None) != (self.rows is None):
            raise ValueError("feature_names and rows must be given together")
        return self


class PredictionResponse(BaseModel):
    """The prediction for one player, naming the model version that produced it."""

    player_id: str = Field(description="Pseudonymised player id.")
    model_name: str
    model_version: str | None
    variant: str = Field(description="'champion' or 'challenger'.")
    cluster_id: int
    segment: str
    confidence: float
    campaign_recommendations: list[dict[str, object]]
    risk: dict[str, float]
    responsible_gambling_flag: bool
    responsible_gambling_reasons: list[str]
    recommendation_note: str
    imputed_features: list[str]
    feature_source: Literal[
        "request", "online_store", "request+online_store", "cold_start"
    ] = Field(
        description="'cold_start' when the player is unknown and sent no features: "
        "the answer is the segment of the training medians."
    )
    latency_ms: float


class BatchPredictionResponse(BaseModel):
    """Predictions for a batch: ``predictions`` for rows, ``columns`` for columns."""

    model_name: str
    model_versions: list[str | None]
    count: int
    predictions: list[PredictionResponse] | None = None
    columns: dict[str, list[object]] | None = None
    segments: dict[str, dict[str, object]] | None = None
    latency_ms: float


class CanaryRequest(BaseModel):
    """Send a fraction of the players to a registered version."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(pattern=r"^[0-9]+$", description="Registered version number.")
    traffic: float = Field(ge=0.0, le=1.0, description="Fraction of players, 0 to 1.")
    model_name: str | None = Field(
        default=None, description="Defaults to the served model."
    )


class InferTensor(BaseModel):
    """One tensor of the Open Inference Protocol (v2)."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, object] | None = None
    data: list[object] | None = None


class InferRequest(BaseModel):
    """Open Inference Protocol inference request."""

    id: str | None = None
    parameters: dict[str, object] | None = None
    inputs: list[InferTensor] = Field(min_length=1)
    outputs: list[dict[str, object]] | None = None


def inline_schema(model: type[BaseModel]) -> dict[str, object]:
    """Return the JSON schema of ``model`` with every ``$ref`` inlined.

    OpenAPI request bodies given through ``openapi_extra`` cannot carry the
    ``$defs`` that pydantic emits for nested models, so they are inlined.
    """
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: object) -> object:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(definitions[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)  # type: ignore[return-value]

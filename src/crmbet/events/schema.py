"""The canonical transaction event, as a Pydantic model and as a Polars schema.

Every source adapter produces the same columns. A bet carries its stake in
``amount`` and everything paid back to the player, bonus included, in
``payout``; a lost bet has ``payout == 0``. Deposits, withdrawals, bonuses
and cashback carry the money moved in ``amount`` and no product.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: Version of the event schema; stored with every model and online state.
EVENT_SCHEMA_VERSION = 1


class EventType(StrEnum):
    """Kind of transaction."""

    BET = "bet"
    DEPOSIT = "deposit"
    WITHDRAWAL = "withdrawal"
    BONUS = "bonus"
    CASHBACK = "cashback"


class Product(StrEnum):
    """Product a bet was placed on."""

    SPORTS = "sports"
    CASINO = "casino"
    CRASH = "crash"
    POKER = "poker"
    LOTTERY = "lottery"
    OTHER = "other"


EVENT_TYPES: tuple[str, ...] = tuple(member.value for member in EventType)
PRODUCTS: tuple[str, ...] = tuple(member.value for member in Product)

#: Column order and dtypes of a canonical event table.
EVENT_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "player_id": pl.String(),
    "ts": pl.Datetime("us", "UTC"),
    "event_type": pl.String(),
    "amount": pl.Float64(),
    "payout": pl.Float64(),
    "bonus_amount": pl.Float64(),
    "product": pl.String(),
    "multiplier": pl.Float64(),
    "game": pl.String(),
    "session_id": pl.String(),
    "channel": pl.String(),
}

#: Fields a source must provide; the others are optional.
REQUIRED_FIELDS: tuple[str, ...] = (
    "event_id",
    "player_id",
    "ts",
    "event_type",
    "amount",
)

#: Fields that are free text and never checked beyond their type.
OPTIONAL_TEXT_FIELDS: tuple[str, ...] = ("game", "session_id", "channel")


class Event(BaseModel):
    """One validated transaction.

    Examples
    --------
    >>> event = Event(event_id="e1", player_id="alice", ts="2024-05-01T21:00:00Z",
    ...               event_type="bet", amount=10, payout=25, product="sports")
    >>> event.won
    True
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = EVENT_SCHEMA_VERSION
    event_id: str = Field(min_length=1, max_length=256)
    player_id: str = Field(min_length=1, max_length=256)
    ts: datetime
    event_type: EventType
    amount: float = Field(ge=0, allow_inf_nan=False)
    payout: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    bonus_amount: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    product: Product | None = None
    multiplier: float | None = Field(default=None, ge=1, allow_inf_nan=False)
    game: str | None = None
    session_id: str | None = None
    channel: str | None = None

    @field_validator("ts")
    @classmethod
    def _require_timezone(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _check_bet_fields(self) -> Event:
        if self.event_type is EventType.BET:
            if self.product is None:
                object.__setattr__(self, "product", Product.OTHER)
        elif self.payout:
            raise ValueError(
                f"payout={self.payout} is set on a {self.event_type.value} event; "
                "only bets have a payout, so move the amount to 'amount'"
            )
        return self

    @property
    def won(self) -> bool:
        """Whether a bet paid back more than its stake."""
        return self.event_type is EventType.BET and self.payout > self.amount

    def to_row(self) -> dict[str, Any]:
        """Return the event as a row of the canonical event table."""
        row = self.model_dump(exclude={"schema_version"})
        row["event_type"] = self.event_type.value
        row["product"] = self.product.value if self.product else None
        return row


def empty_events() -> pl.DataFrame:
    """Return an event table with no rows and the canonical schema."""
    return pl.DataFrame(schema=EVENT_SCHEMA)


def events_from_models(events: list[Event]) -> pl.DataFrame:
    """Build a canonical event table from validated events."""
    if not events:
        return empty_events()
    return pl.DataFrame([event.to_row() for event in events], schema=EVENT_SCHEMA)

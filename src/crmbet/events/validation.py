"""Vectorised validation of raw transaction tables into canonical events.

A raw table comes from any source with its own column names. ``normalize``
renames the columns with a :class:`ColumnMapping`, parses and checks every
field, and splits the rows into valid canonical events and dead letters.
A dead letter keeps the whole raw record and one message per invalid field
naming the row, the field, the value and the fix, so nothing is lost.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl

from crmbet.errors import EventValidationError, FieldError
from crmbet.events.schema import (
    EVENT_SCHEMA,
    EVENT_TYPES,
    OPTIONAL_TEXT_FIELDS,
    PRODUCTS,
    REQUIRED_FIELDS,
)

logger = logging.getLogger(__name__)

#: Events stamped further ahead than this are rejected as clock errors.
MAX_FUTURE_SKEW = timedelta(days=1)

#: Events stamped before this are rejected: online betting records are
#: younger, and such times come from a misread unit or format (20261120,
#: a YYYYMMDD date, read as Unix seconds is 1970-08-23).
EARLIEST_TIMESTAMP = datetime(2000, 1, 1, tzinfo=UTC)

#: Optional input column with each record's 1-based position in its source,
#: for sources that drop records before validation (unparsable JSON lines).
SOURCE_ROW_COLUMN = "__source_row"

DEAD_LETTER_SCHEMA: dict[str, pl.DataType] = {
    "row": pl.Int64(),
    "errors": pl.List(pl.String()),
    "record": pl.String(),
    "source": pl.String(),
}

#: Distinct values up to which a label column is cleaned value by value.
MAX_DISTINCT_LABELS = 1_000

#: Largest amount accepted. Squared stakes are summed into the player state,
#: so amounts near 1e154 and above overflow to infinity; 1e12 is far above
#: any real stake in any currency.
MAX_AMOUNT = 1e12


@dataclass(frozen=True)
class ColumnMapping:
    """Maps canonical event fields to the column names of a source.

    ``columns`` maps a canonical field to the source column holding it,
    ``constants`` gives a fixed value for a field the source lacks (say
    ``{"product": "casino"}``) and ``event_type_values`` translates the
    source's own event-type labels.

    Examples
    --------
    >>> mapping = ColumnMapping(columns={"player_id": "customer", "amount": "stake"})
    >>> mapping.source_column("player_id")
    'customer'
    """

    columns: Mapping[str, str] = field(default_factory=dict)
    constants: Mapping[str, Any] = field(default_factory=dict)
    event_type_values: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.columns) | set(self.constants)
        unknown -= set(EVENT_SCHEMA)
        if unknown:
            raise ValueError(
                f"column mapping names unknown event field(s) {sorted(unknown)}; "
                f"use only {list(EVENT_SCHEMA)}"
            )

    def source_column(self, name: str) -> str:
        """Return the source column that contains canonical field ``name``."""
        return self.columns.get(name, name)

    @classmethod
    def from_json(cls, text: str) -> ColumnMapping:
        """Read a mapping written as JSON, as the ``--mapping`` option takes it.

        A flat object maps canonical fields to source columns. An object
        whose keys are among ``columns``, ``constants`` and
        ``event_type_values`` sets those parts.

        Examples
        --------
        >>> ColumnMapping.from_json('{"player_id": "customer"}').columns
        {'player_id': 'customer'}
        >>> ColumnMapping.from_json(
        ...     '{"event_type_values": {"wager": "bet"}}'
        ... ).event_type_values
        {'wager': 'bet'}
        """
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"--mapping is not valid JSON ({error}); pass an object such as "
                '\'{"player_id": "customer"}\''
            ) from error
        if not isinstance(value, dict):
            raise ValueError(f"--mapping must be a JSON object, got {text!r}")
        if value and set(value) <= _MAPPING_PARTS:
            wrong = [key for key, part in value.items() if not isinstance(part, dict)]
            if wrong:
                raise ValueError(
                    f"--mapping part(s) {wrong} must be JSON objects, e.g. "
                    '\'{"event_type_values": {"wager": "bet"}}\''
                )
            return cls(**value)
        return cls(columns=value)


_MAPPING_PARTS = {"columns", "constants", "event_type_values"}


@dataclass
class ValidationResult:
    """Valid canonical events and the dead letters split off from one table."""

    events: pl.DataFrame
    dead_letters: pl.DataFrame
    #: ``event_id`` and the requested source columns of the valid rows, row
    #: for row with ``events``; None when no such column was requested.
    extra: pl.DataFrame | None = None

    @property
    def n_invalid(self) -> int:
        """Number of records that went to the dead letters."""
        return self.dead_letters.height

    def field_errors(self, limit: int = 50) -> list[FieldError]:
        """Return the first ``limit`` field errors as structured objects."""
        errors: list[FieldError] = []
        for row, messages in self.dead_letters.select("row", "errors").iter_rows():
            for message in messages:
                name, _, rest = message.partition("=")
                shown, _, tail = rest.partition(" is ")
                problem, _, fix = tail.partition("; ")
                value = (
                    None
                    if shown == "None"
                    else shown.removeprefix("'").removesuffix("'")
                )
                errors.append(FieldError(row, name, value, problem, fix))
                if len(errors) >= limit:
                    return errors
        return errors

    def raise_if_invalid(self) -> None:
        """Raise :class:`EventValidationError` when any record was invalid."""
        if self.n_invalid:
            total = int(self.dead_letters["errors"].list.len().sum())
            raise EventValidationError(self.field_errors(), total=total)


def _text(name: str) -> pl.Expr:
    return pl.col(name).cast(pl.String, strict=False).str.strip_chars()


def _label(frame: pl.DataFrame, name: str) -> pl.Expr:
    """Return the stripped, lowercase text of a column of a few distinct labels.

    Each distinct label is cleaned once and mapped back, which on 2 million
    rows cost a fifth of cleaning every row. When every label is already
    clean, the column is returned as it is.
    """
    cleaned = _text(name).str.to_lowercase()
    column = frame.get_column(name)
    if column.dtype != pl.String:
        return cleaned
    labels = column.unique().drop_nulls()
    if labels.len() > MAX_DISTINCT_LABELS:
        return cleaned
    clean_labels = labels.to_frame().select(cleaned).to_series()
    changed = labels != clean_labels
    if not changed.any():
        return pl.col(name)
    return pl.col(name).replace(labels.filter(changed), clean_labels.filter(changed))


def _number(name: str) -> pl.Expr:
    column = pl.col(name)
    return column.cast(pl.Float64, strict=False)


#: Text formats tried before format inference, in order. Polars parses
#: the first (whole seconds, UTC "Z") about four times faster than an
#: inferred format; the second is what ``crmbet stream-produce`` writes.
FAST_TIMESTAMP_FORMATS: tuple[str, ...] = (
    "%Y-%m-%dT%H:%M:%SZ",
    "%Y-%m-%dT%H:%M:%S%.fZ",
)


def _fast_timestamps(frame: pl.DataFrame, name: str) -> pl.Series | None:
    """Parse a text column with one fixed format when every value fits it.

    Returns None when some value does not fit, so that the caller parses
    with format inference. A value that fits a fixed format gets the same
    time either way, so the result does not depend on which path ran.
    """
    if frame.height == 0 or frame.schema[name] != pl.String:
        return None
    text = frame.get_column(name).str.strip_chars()
    present = text.len() - text.null_count()
    if present == 0:
        return None
    first = text.drop_nulls()[0]
    for fmt in FAST_TIMESTAMP_FORMATS:
        if ("." in first) != ("%.f" in fmt):
            continue
        parsed = text.str.strptime(
            pl.Datetime("us", "UTC"), fmt, strict=False, ambiguous="earliest"
        )
        if parsed.len() - parsed.null_count() == present:
            return parsed
    return None


def _parse_timestamp(frame: pl.DataFrame, name: str) -> pl.Expr:
    fast = _fast_timestamps(frame, name)
    if fast is not None:
        return pl.lit(fast)
    dtype = frame.schema[name]
    column = pl.col(name)
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            return column.dt.replace_time_zone("UTC").dt.cast_time_unit("us")
        return column.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
    if dtype.is_numeric():
        # Numbers are read as Unix epoch seconds.
        # Values too large for microseconds become null, so the checks report them.
        return (
            (column.cast(pl.Float64) * 1_000_000)
            .cast(pl.Int64, strict=False)
            .cast(pl.Datetime("us", "UTC"))
        )
    text = column.cast(pl.String).str.strip_chars()
    # ISO 8601 (with "T" or a space, with or without an offset) whose format
    # Polars infers from the column, or text holding Unix seconds, since CSV
    # is read as text.
    iso = text.str.to_datetime(
        time_zone="UTC", time_unit="us", strict=False, ambiguous="earliest"
    )
    epoch = text.cast(pl.Float64, strict=False)
    from_epoch = (
        (epoch * 1_000_000).cast(pl.Int64, strict=False).cast(pl.Datetime("us", "UTC"))
    )
    parsed = frame.select(pl.coalesce(iso, from_epoch)).to_series()
    written = frame.select(text.is_not_null().sum()).item()
    if parsed.len() - parsed.null_count() < written:
        # The inferred format did not fit every row: the column mixes ISO
        # forms (exports joined from two systems do). Parse each row by the
        # forms below; rows none of them fits still become dead letters.
        parsed = frame.select(pl.coalesce(pl.lit(parsed), *_iso_forms(text)))
        parsed = parsed.to_series()
    return pl.lit(parsed)


def _iso_forms(text: pl.Expr) -> list[pl.Expr]:
    normalised = text.str.replace(r"^(\d{4}-\d{2}-\d{2})[ t]", "${1}T")
    return [
        normalised.str.to_datetime(
            form, time_zone="UTC", time_unit="us", strict=False, ambiguous="earliest"
        )
        for form in _ISO_FORMS
    ]


#: ISO 8601 forms tried row by row when one column mixes them; a space
#: between date and time is read as "T" first. Naive times are UTC.
_ISO_FORMS = ("%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d")


#: Numbers of Unix seconds from this value on (the year 5138) are rejected,
#: because they come from a misread unit: Unix milliseconds exceed it after 1973.
MAX_UNIX_SECONDS = 1e11


def _too_large_for_seconds(
    frame: pl.DataFrame, name: str, parsed: pl.Expr, latest: datetime
) -> pl.Expr:
    """Return the mask of ``name`` values that are numbers of Unix seconds >= 1e11.

    Such values were written in milliseconds or microseconds. A text column
    is tested only when some value did not parse or lies in the future, so
    that a valid column of ten million ISO strings skips the number parse.
    """
    dtype = frame.schema[name]
    if dtype.is_numeric():
        return pl.col(name).cast(pl.Float64).abs() >= MAX_UNIX_SECONDS
    if dtype != pl.String:
        return pl.lit(False)
    suspect = frame.select(
        ((parsed.is_null() & pl.col(name).is_not_null()) | (parsed > pl.lit(latest)))
        .fill_null(False)
        .any()
    ).item()
    if not suspect:
        return pl.lit(False)
    return (
        pl.col(name).str.strip_chars().cast(pl.Float64, strict=False).abs()
        >= MAX_UNIX_SECONDS
    )


def _key_checks(latest: datetime, in_milliseconds: pl.Expr) -> list[_Check]:
    """Return the checks of the parsed ``__player_id`` and ``__ts`` columns.

    ``in_milliseconds`` is the mask of :func:`_too_large_for_seconds`.
    """
    ts = pl.col("__ts")
    present = pl.col("ts").is_not_null()
    return [
        _message(
            pl.col("__player_id").is_null() | (pl.col("__player_id") == ""),
            "player_id",
            "missing",
            "give every record the id of the player it belongs to",
        ),
        _message(
            ~present,
            "ts",
            "missing",
            "give every record its time as ISO 8601, e.g. 2024-05-01T21:00:00Z",
        ),
        _message(
            present & ts.is_null() & ~in_milliseconds.fill_null(False),
            "ts",
            "not a timestamp",
            "write ISO 8601, e.g. 2024-05-01T21:00:00Z, 2024-05-01 21:00:00 or "
            "2024-05-01T23:00:00+02:00, or Unix seconds",
        ),
        _message(
            in_milliseconds,
            "ts",
            "too large for Unix seconds",
            "it looks like milliseconds (or microseconds): divide by 1000 "
            "(or 1000000) to get seconds",
        ),
        _message(
            (ts > pl.lit(latest)) & ~in_milliseconds.fill_null(False),
            "ts",
            "more than 1 day in the future",
            "check the source's clock and time zone",
        ),
        _message(
            ts < pl.lit(EARLIEST_TIMESTAMP),
            "ts",
            f"before {EARLIEST_TIMESTAMP:%Y-%m-%d}",
            "check the unit and format: Unix seconds, or ISO 8601 such as "
            "2024-05-01T21:00:00Z; a date like 20240501 is read as seconds",
        ),
    ]


def parse_keys(
    frame: pl.DataFrame,
    *,
    now: datetime | None = None,
    limit: int = 50,
) -> tuple[pl.DataFrame, list[FieldError], int]:
    """Parse ``player_id`` and ``ts`` as the fields of events are parsed.

    For tables keyed by player and time that are not events, such as the
    rows of a point-in-time training set. ``player_id`` becomes stripped
    text (numbers included) and ``ts`` a UTC datetime, read by the same
    rules and checked against the same limits as an event's time.

    Returns
    -------
    tuple
        ``frame`` with the two columns parsed, the first ``limit`` errors
        (rows counted from 1, in row order) and the number of errors.
    """
    latest = (now or datetime.now(UTC)) + MAX_FUTURE_SKEW
    timestamps = _parse_timestamp(frame, "ts")
    in_milliseconds = _too_large_for_seconds(frame, "ts", timestamps, latest)
    parsed = frame.with_columns(
        _text("player_id").alias("__player_id"),
        timestamps.alias("__ts"),
    ).with_row_index("__row", offset=1)
    errors: list[tuple[int, FieldError]] = []
    total = 0
    for check in _key_checks(latest, in_milliseconds):
        failing = parsed.filter(check.failing())
        total += failing.height
        for row, value in failing.select("__row", check.name).head(limit).iter_rows():
            errors.append(
                (row, FieldError(row, check.name, value, check.problem, check.fix))
            )
    errors.sort(key=lambda pair: pair[0])
    keys = parsed.select(
        pl.col("__player_id").alias("player_id"), pl.col("__ts").alias("ts")
    )
    return (
        frame.with_columns(keys.get_columns()),
        [error for _, error in errors[:limit]],
        total,
    )


@dataclass(frozen=True)
class _Check:
    """One field check: a mask of failing rows and how to word the failure."""

    mask: pl.Expr
    name: str
    problem: str
    fix: str

    def failing(self) -> pl.Expr:
        """Return the mask with null read as passing."""
        return self.mask.fill_null(False)

    def message(self) -> pl.Expr:
        """Return the message of failing rows and null elsewhere."""
        text = pl.format(
            "{}={} is {}; {}",
            pl.lit(self.name),
            _raw_repr(self.name),
            pl.lit(self.problem),
            pl.lit(self.fix),
        )
        return pl.when(self.mask).then(text).otherwise(None)


def _message(mask: pl.Expr, name: str, problem: str, fix: str) -> _Check:
    # Messages are built only for batches with failing rows, so valid
    # batches skip building about 30 text expressions.
    return _Check(mask, name, problem, fix)


def _raw_repr(name: str) -> pl.Expr:
    value = pl.col(name).cast(pl.String, strict=False)
    return (
        pl.when(value.is_null())
        .then(pl.lit("None"))
        .otherwise(pl.concat_str(pl.lit("'"), value, pl.lit("'")))
    )


def _apply_mapping(raw: pl.DataFrame, mapping: ColumnMapping) -> pl.DataFrame:
    renames = {
        source: target
        for target, source in mapping.columns.items()
        if source in raw.columns and source != target
    }
    unmapped = {t: s for t, s in mapping.columns.items() if s not in raw.columns}
    if unmapped:
        raise EventValidationError(
            [
                FieldError(
                    None,
                    target,
                    source,
                    "mapped to a column the input lacks",
                    f"fix the mapping; the input's columns are {raw.columns}",
                )
                for target, source in unmapped.items()
            ]
        )
    dropped = [t for t in renames.values() if t in raw.columns and t not in renames]
    frame = raw.drop(dropped) if dropped else raw
    if renames:
        frame = frame.rename(renames)
    for name, value in mapping.constants.items():
        frame = frame.with_columns(pl.lit(value).alias(name))
    missing_required = [name for name in REQUIRED_FIELDS if name not in frame.columns]
    if missing_required:
        sources = {name: mapping.source_column(name) for name in missing_required}
        hint = ""
        if len(raw.columns) == 1:
            found = [mark for mark in ";|\t" if mark in raw.columns[0]]
            if found:
                hint = (
                    f"; the header looks separated by {found[0]!r}, but crmbet "
                    "reads commas (tabs in .tsv files)"
                )
        raise EventValidationError(
            [
                FieldError(
                    None,
                    name,
                    None,
                    f"missing: the input has no column '{source}'",
                    f"add a column '{source}' or map '{name}' to an existing column "
                    f"(available: {raw.columns}){hint}",
                )
                for name, source in sources.items()
            ]
        )
    absent = [name for name in EVENT_SCHEMA if name not in frame.columns]
    if absent:
        frame = frame.with_columns(pl.lit(None).alias(name) for name in absent)
    if mapping.event_type_values:
        frame = frame.with_columns(
            _text("event_type")
            .replace(dict(mapping.event_type_values))
            .alias("event_type")
        )
    return frame


def normalize(
    raw: pl.DataFrame,
    mapping: ColumnMapping | None = None,
    *,
    row_offset: int = 0,
    source: str = "",
    now: datetime | None = None,
    keep_columns: Sequence[str] = (),
    free_text: bool = True,
) -> ValidationResult:
    """Validate a raw table and convert its valid rows to canonical events.

    Parameters
    ----------
    raw:
        Records as read from a source, with any column names and dtypes.
    mapping:
        How the source's columns map to the canonical fields.
    row_offset:
        Number of records before this table in its source, so that row
        numbers in messages count from the start of the source (1-based).
    source:
        Name of the source, kept with each dead letter.
    now:
        Reference time for the future-timestamp check; the current time by
        default.
    free_text:
        With False the free-text fields (``game``, ``session_id``,
        ``channel``) of the events are left null, for callers that never
        read them. Dead letters still keep the whole raw record.
    keep_columns:
        Source columns to return in ``ValidationResult.extra`` for the
        valid rows. A name absent from the source, or renamed by the
        mapping, is left out.

    Returns
    -------
    ValidationResult
        The canonical events (player ids not yet pseudonymised) and the dead
        letters.
    """
    mapping = mapping or ColumnMapping()
    frame = _apply_mapping(raw, mapping)
    latest = (now or datetime.now(UTC)) + MAX_FUTURE_SKEW
    if SOURCE_ROW_COLUMN in frame.columns:
        frame = frame.rename({SOURCE_ROW_COLUMN: "__row"})
    else:
        frame = frame.with_row_index("__row", offset=row_offset + 1)

    # Parse every field into its canonical dtype; a failed parse becomes null.
    timestamps = _parse_timestamp(frame, "ts")
    in_milliseconds = _too_large_for_seconds(frame, "ts", timestamps, latest)
    parsed = frame.with_columns(
        _text("event_id").alias("__event_id"),
        _text("player_id").alias("__player_id"),
        timestamps.alias("__ts"),
        _label(frame, "event_type").alias("__event_type"),
        _number("amount").alias("__amount"),
        _number("payout").alias("__payout"),
        _number("bonus_amount").alias("__bonus_amount"),
        _label(frame, "product").alias("__product"),
        _number("multiplier").alias("__multiplier"),
        *[
            (_text(name) if free_text else pl.lit(None, dtype=pl.String)).alias(
                f"__{name}"
            )
            for name in OPTIONAL_TEXT_FIELDS
        ],
    )
    is_bet = pl.col("__event_type") == "bet"
    present = {name: pl.col(name).is_not_null() for name in EVENT_SCHEMA}

    def blank(name: str) -> pl.Expr:
        return pl.col(f"__{name}").is_null() | (pl.col(f"__{name}") == "")

    def unparsable(name: str) -> pl.Expr:
        return present[name] & pl.col(f"__{name}").is_null()

    def money_checks(name: str, required: bool) -> list[_Check]:
        value = pl.col(f"__{name}")
        checks = [
            _message(
                unparsable(name),
                name,
                "not a number",
                "write a plain decimal number such as 12.50",
            ),
            _message(
                value < 0,
                name,
                "negative",
                "send a non-negative amount; the event type says its direction",
            ),
            _message(
                value.is_infinite() | value.is_nan(),
                name,
                "not finite",
                "send a finite amount",
            ),
            _message(
                value.is_finite() & (value > MAX_AMOUNT),
                name,
                f"above {MAX_AMOUNT:.0e}",
                "check the unit, because sums and squares of such amounts overflow",
            ),
        ]
        if required:
            checks.append(
                _message(
                    ~present[name],
                    name,
                    "missing",
                    f"every event needs '{name}'",
                )
            )
        return checks

    checks = [
        _message(
            blank("event_id"),
            "event_id",
            "missing",
            "give every record a unique id so replays are not counted twice",
        ),
        *_key_checks(latest, in_milliseconds),
        _message(
            ~pl.col("__event_type").is_in(EVENT_TYPES),
            "event_type",
            "not a known event type",
            f"use one of {list(EVENT_TYPES)} or map the source's labels",
        ),
        *money_checks("amount", required=True),
        *money_checks("payout", required=False),
        *money_checks("bonus_amount", required=False),
        _message(
            present["payout"] & ~is_bet & (pl.col("__payout") > 0),
            "payout",
            "set on an event that is not a bet",
            "only bets have a payout; put the money moved in 'amount'",
        ),
        _message(
            is_bet
            & pl.col("__product").is_not_null()
            & ~pl.col("__product").is_in(PRODUCTS),
            "product",
            "not a known product",
            f"use one of {list(PRODUCTS)}",
        ),
        _message(
            unparsable("multiplier"),
            "multiplier",
            "not a number",
            "write the cash-out multiplier as a decimal, e.g. 2.5",
        ),
        _message(
            pl.col("__multiplier") < 1,
            "multiplier",
            "below 1",
            "a cash-out multiplier is at least 1; leave it empty on a lost bet",
        ),
    ]
    # The masks are cheap. The messages are formatted for the failing rows
    # only, which saves formatting about 30 strings per valid row. Filtering
    # copies every column, so a table without failing rows is used as it is.
    invalid = parsed.select(
        pl.any_horizontal([check.failing() for check in checks])
    ).to_series()
    any_invalid = bool(invalid.any())
    good = parsed.filter(~invalid) if any_invalid else parsed
    bad = parsed.filter(invalid) if any_invalid else parsed.clear()
    if bad.height:
        bad = bad.with_columns(
            pl.concat_list([check.message() for check in checks])
            .list.drop_nulls()
            .alias("__errors")
        )

    events = good.select(
        pl.col("__event_id").alias("event_id"),
        pl.col("__player_id").alias("player_id"),
        pl.col("__ts").alias("ts"),
        pl.col("__event_type").alias("event_type"),
        pl.col("__amount").alias("amount"),
        pl.when(is_bet)
        .then(pl.col("__payout").fill_null(0.0))
        .otherwise(0.0)
        .alias("payout"),
        pl.col("__bonus_amount").fill_null(0.0).alias("bonus_amount"),
        pl.when(is_bet)
        .then(pl.col("__product").fill_null("other"))
        .otherwise(None)
        .alias("product"),
        pl.col("__multiplier").alias("multiplier"),
        *[pl.col(f"__{name}").alias(name) for name in OPTIONAL_TEXT_FIELDS],
    ).cast(EVENT_SCHEMA)
    carried = [
        name
        for name in keep_columns
        if name in raw.columns and name in frame.columns and name not in EVENT_SCHEMA
    ]
    extra = (
        good.select(pl.col("__event_id").alias("event_id"), *carried)
        if carried
        else None
    )

    record_columns = [c for c in bad.columns if not c.startswith("__")]
    dead = (
        bad.select(
            pl.col("__row").cast(pl.Int64).alias("row"),
            pl.col("__errors").alias("errors"),
            pl.struct([pl.col(c).cast(pl.String, strict=False) for c in record_columns])
            .struct.json_encode()
            .alias("record"),
            pl.lit(source).alias("source"),
        )
        if bad.height
        else pl.DataFrame(schema=DEAD_LETTER_SCHEMA)
    )
    if bad.height:
        logger.warning(
            "%d of %d records from %s are invalid and went to the dead letters; "
            "first: %s",
            bad.height,
            raw.height,
            source or "input",
            bad["__errors"][0][0],
        )
    return ValidationResult(
        events=events, dead_letters=dead.cast(DEAD_LETTER_SCHEMA), extra=extra
    )

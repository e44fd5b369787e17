"""Point-in-time training sets: features as they were at each row's time.

For a table of ``(player_id, ts)`` rows, every row gets the features of the
state folded from that player's events strictly before ``ts``, read at
``ts`` (so recency and the decayed sums age to the row's time). Rows that
share a player and a time are all kept, in input order, so the output has
exactly as many rows as the input.

The state of each distinct ``(player, ts)`` pair is computed by joining the
pair to the player's earlier events and running the same
:func:`crmbet.features.state.fold` as training. That reuse is what makes
the values identical to the offline and online paths. The cost is
``O(sum over pairs of the player's earlier events)``; pairs are processed in
chunks of at most ``max_rows`` joined events to bound memory.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import polars as pl

from crmbet.errors import QueryValidationError
from crmbet.events.adapters import starts_like_parquet
from crmbet.events.validation import parse_keys
from crmbet.features.definitions import FEATURES, compute_columns, state_columns
from crmbet.features.state import fold

logger = logging.getLogger(__name__)

_KEY = "__pit_key"
_ROW = "__pit_row"
_AS_OF = "__pit_as_of"

#: Names of files that must contain Parquet. Such a file that does not start
#: with Parquet's magic number is reported instead of being read as CSV.
_PARQUET_SUFFIXES = (".parquet", ".pq")


def read_queries(path: Path, names: Sequence[str] | None = None) -> pl.DataFrame:
    """Read a query table from a CSV or Parquet file and check it.

    A file that starts with Parquet's magic number is read as Parquet,
    whatever its name. Any other file is read as CSV, with ``player_id`` and
    ``ts`` as text, so that :func:`check_queries` parses them as it parses
    the fields of events.
    """
    if path.is_dir():
        raise ValueError(f"queries {path} is a folder; pass one CSV or Parquet file")
    if not path.exists():
        raise FileNotFoundError(f"queries file {path} does not exist")
    is_parquet = starts_like_parquet(path)
    if not is_parquet and path.name.lower().endswith(_PARQUET_SUFFIXES):
        raise ValueError(
            f"queries file {path} is named as Parquet but does not start like a "
            "Parquet file; if it contains CSV text, rename it to .csv"
        )
    try:
        if is_parquet:
            table = pl.read_parquet(path)
        else:
            table = pl.read_csv(
                path,
                schema_overrides={"player_id": pl.String, "ts": pl.String},
                try_parse_dates=True,
            )
    except pl.exceptions.PolarsError as error:
        kind = "Parquet" if is_parquet else "CSV"
        raise ValueError(
            f"failed to read queries file {path} as {kind}: {error}"
        ) from error
    return check_queries(table, names, source=f"queries file {path}")


def check_queries(
    queries: pl.DataFrame,
    names: Sequence[str] | None = None,
    *,
    source: str = "the query table",
) -> pl.DataFrame:
    """Return ``queries`` with ``player_id`` as text and ``ts`` as a UTC datetime.

    Both are parsed as the fields of events are: ids may be numbers, and
    ``ts`` may be ISO 8601 in any mix of forms, a datetime column or Unix
    seconds. Raises :class:`~crmbet.errors.QueryValidationError` naming the
    rows with a missing id or an invalid time, and ``ValueError`` when a
    column is missing or has the name of a computed column.
    """
    missing = [
        column for column in ("player_id", "ts") if column not in queries.columns
    ]
    if missing:
        raise ValueError(
            f"{source} lacks column(s) {missing}; pass one row per (player_id, ts)"
        )
    computed = {"n_prior_events", _KEY, _ROW, _AS_OF, *(names or FEATURES)}
    clashing = [column for column in queries.columns if column in computed]
    if clashing:
        raise ValueError(
            f"{source} has column(s) {clashing} named like the computed columns; "
            "rename or drop them (a table written by crmbet features pit already "
            "holds them)"
        )
    parsed, errors, total = parse_keys(queries)
    if total:
        raise QueryValidationError(source, errors, total)
    return parsed


def _chunks(
    keys: pl.DataFrame, sizes: pl.DataFrame, max_rows: int
) -> Iterator[pl.DataFrame]:
    """Split the pairs so that each chunk joins at most about ``max_rows`` events."""
    weighted = keys.join(sizes, on="player_id", how="left").with_columns(
        pl.col("__n").fill_null(0).cum_sum().alias("__cum")
    )
    boundaries = (weighted["__cum"] // max(max_rows, 1)).to_numpy()
    for part in weighted.with_columns(pl.Series("__part", boundaries)).partition_by(
        "__part", maintain_order=True
    ):
        yield part.drop("__n", "__cum", "__part")


def point_in_time_features(
    events: pl.DataFrame,
    queries: pl.DataFrame,
    names: Sequence[str] | None = None,
    *,
    max_rows: int = 5_000_000,
) -> pl.DataFrame:
    """Compute features for each ``(player_id, ts)`` row from earlier events only.

    Parameters
    ----------
    events:
        Canonical events (see :mod:`crmbet.events.schema`).
    queries:
        Rows with ``player_id`` and ``ts``, read as in :func:`check_queries`;
        other columns, such as labels, are carried through unchanged.
    names:
        Features to compute; every registered feature by default.
    max_rows:
        Most joined (pair, earlier event) rows folded at once.

    Returns
    -------
    polars.DataFrame
        ``queries`` in its row order, with ``player_id`` as text and ``ts``
        as a UTC datetime, plus ``n_prior_events`` and one column per feature
        (null where the player had no earlier event). No rows give an empty
        table with those columns.
    """
    names = list(names) if names is not None else list(FEATURES)
    rows = check_queries(queries, names).with_row_index(_ROW)
    keys = (
        rows.select("player_id", pl.col("ts").alias(_AS_OF))
        .unique(maintain_order=True)
        .with_row_index(_KEY)
    )
    sizes = events.group_by("player_id").agg(pl.len().alias("__n"))
    parts = [
        _features_of_pairs(events, chunk, names)
        for chunk in _chunks(keys, sizes, max_rows)
        if chunk.height
    ]
    computed = pl.concat(parts) if parts else pl.DataFrame(schema=_schema(names))
    out = (
        rows.with_columns(pl.col("ts").alias(_AS_OF))
        .join(keys, on=["player_id", _AS_OF], how="left")
        .join(computed, on=_KEY, how="left")
        .with_columns(pl.col("n_prior_events").fill_null(0.0))
        .sort(_ROW)
        .drop(_ROW, _KEY, _AS_OF)
    )
    logger.info(
        "built a point-in-time table of %d rows from %d distinct pairs",
        out.height,
        keys.height,
    )
    return out


def _features_of_pairs(
    events: pl.DataFrame, pairs: pl.DataFrame, names: list[str]
) -> pl.DataFrame:
    earlier = (
        events.join(pairs, on="player_id", how="inner")
        .filter(pl.col("ts") < pl.col(_AS_OF))
        .with_columns(pl.col(_KEY).cast(pl.String).alias("player_id"))
        .drop(_KEY, _AS_OF)
    )
    schema = _schema(names)
    if earlier.height == 0:
        return pl.DataFrame(schema=schema)
    states = fold(earlier)
    key = states["player_id"].cast(pl.UInt32)
    as_of = (
        pl.DataFrame({_KEY: key})
        .join(pairs.select(_KEY, _AS_OF), on=_KEY, how="left")[_AS_OF]
        .dt.epoch("us")
        .cast(pl.Float64)
        .to_numpy()
        / 1e6
    )
    columns = compute_columns(state_columns(states), as_of, names)
    return pl.DataFrame(
        {_KEY: key, "n_prior_events": states["n_events"], **columns}, schema=schema
    )


def _schema(names: list[str]) -> dict[str, pl.DataType]:
    """Return the schema of the computed columns, keyed by pair."""
    return {_KEY: pl.UInt32(), "n_prior_events": pl.Float64()} | {
        name: pl.Float64() for name in names
    }

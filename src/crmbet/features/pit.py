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

import polars as pl

from crmbet.features.definitions import FEATURES, compute_columns, state_columns
from crmbet.features.state import fold

logger = logging.getLogger(__name__)

_KEY = "__pit_key"
_ROW = "__pit_row"
_AS_OF = "__pit_as_of"


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
        Rows with ``player_id`` and ``ts`` (a UTC datetime); other columns,
        such as labels, are carried through unchanged.
    names:
        Features to compute; every registered feature by default.
    max_rows:
        Most joined (pair, earlier event) rows folded at once.

    Returns
    -------
    polars.DataFrame
        ``queries`` in its row order, plus ``n_prior_events`` and one column
        per feature (null where the player had no earlier event).
    """
    missing = [
        column for column in ("player_id", "ts") if column not in queries.columns
    ]
    if missing:
        raise ValueError(
            f"query table lacks column(s) {missing}; pass one row per (player_id, ts)"
        )
    names = list(names) if names is not None else list(FEATURES)
    rows = queries.with_row_index(_ROW)
    queried_ts = pl.col("ts").cast(pl.Datetime("us", "UTC"))
    keys = (
        rows.select("player_id", queried_ts.alias(_AS_OF))
        .unique(maintain_order=True)
        .with_row_index(_KEY)
    )
    sizes = events.group_by("player_id").agg(pl.len().alias("__n"))
    parts = [
        _features_of_pairs(events, chunk, names)
        for chunk in _chunks(keys, sizes, max_rows)
    ]
    computed = pl.concat(parts) if parts else pl.DataFrame()
    out = (
        rows.with_columns(queried_ts.alias(_AS_OF))
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
    schema = {_KEY: pl.UInt32, "n_prior_events": pl.Float64} | {
        name: pl.Float64 for name in names
    }
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

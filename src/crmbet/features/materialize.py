"""Materialisation: fold events into the online store, incrementally and once.

Each run folds only the events the store has not applied yet and merges
the folded states into the stored ones. The merge law makes the result
equal to folding every event at once. Replays are recognised per player
with an event-time mark: the time of the player's newest applied event and
the ids of the events at exactly that time. An incoming event is new when
it is later than the mark, or at the mark's time with an id not yet seen.

Events earlier than a player's mark are treated as already applied and
skipped: a replay and an event that arrives after newer events of the same
player look alike. This keeps the merge exact, because the loss-chasing
sequence fields need the new events to follow the stored ones in time, and
it needs no unbounded record of event ids. Sources must therefore be
materialised in event-time order per player; one run may contain events in
any order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import polars as pl

from crmbet.features.online import AppliedMark, OnlineStore
from crmbet.features.state import fold, merge

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaterializeReport:
    """Counts of one materialisation run."""

    events_in: int
    events_applied: int
    #: Events whose id occurred earlier in the same input.
    duplicates_in_input: int
    #: Events at or before their player's mark: replayed, or arrived late.
    skipped: int
    players_updated: int
    watermark: float


def _seconds(column: str = "ts") -> pl.Expr:
    # Same expression as the fold's event time, so marks compare bit for bit.
    return pl.col(column).dt.epoch("us").cast(pl.Float64) / 1e6


def select_new_events(
    events: pl.DataFrame, marks: dict[str, AppliedMark]
) -> tuple[pl.DataFrame, int, int]:
    """Return the events not applied yet, the in-input duplicates and the skipped."""
    unique = events.unique(subset="event_id", keep="first", maintain_order=True)
    repeated_in_input = events.height - unique.height
    if not marks:
        return unique, repeated_in_input, 0
    mark_frame = pl.DataFrame(
        {
            "player_id": list(marks),
            "__mark_ts": [mark.last_ts for mark in marks.values()],
            "__mark_ids": [sorted(mark.event_ids) for mark in marks.values()],
        },
        schema={
            "player_id": pl.String,
            "__mark_ts": pl.Float64,
            "__mark_ids": pl.List(pl.String),
        },
    )
    tagged = unique.join(mark_frame, on="player_id", how="left").with_columns(
        _seconds().alias("__t")
    )
    at_mark = pl.col("__t") == pl.col("__mark_ts")
    seen_at_mark = at_mark & pl.col("__mark_ids").list.contains(pl.col("event_id"))
    is_new = (
        pl.col("__mark_ts").is_null()
        | (pl.col("__t") > pl.col("__mark_ts"))
        | (at_mark & ~seen_at_mark)
    )
    fresh = tagged.filter(is_new).select(events.columns)
    return fresh, repeated_in_input, unique.height - fresh.height


def new_marks(
    applied: pl.DataFrame, states: pl.DataFrame, old: dict[str, AppliedMark]
) -> dict[str, AppliedMark]:
    """Return each updated player's mark: newest event time and the ids at it."""
    last = states.select("player_id", "last_ts")
    at_last = (
        applied.with_columns(_seconds().alias("__t"))
        .join(last, on="player_id")
        .filter(pl.col("__t") == pl.col("last_ts"))
        .group_by("player_id")
        .agg(pl.col("event_id"), pl.col("last_ts").first())
    )
    marks: dict[str, AppliedMark] = {}
    for player, ids, last_ts in at_last.iter_rows():
        previous = old.get(player)
        keep = (
            previous.event_ids
            if previous and previous.last_ts == last_ts
            else frozenset()
        )
        marks[player] = AppliedMark(last_ts, keep | frozenset(ids))
    for player in last["player_id"].to_list():
        if player not in marks and player in old:
            marks[player] = old[player]
    return marks


def materialize(events: pl.DataFrame, store: OnlineStore) -> MaterializeReport:
    """Fold ``events`` into ``store`` once, merging with the stored states.

    Parameters
    ----------
    events:
        Canonical events (pseudonymised), in any order.
    store:
        The online store to update.
    """
    players = events["player_id"].unique().to_list() if events.height else []
    marks = store.applied_marks(players)
    fresh, duplicates, skipped = select_new_events(events, marks)
    if fresh.height == 0:
        logger.info(
            "all %d events were applied before; nothing to materialise", events.height
        )
        return MaterializeReport(
            events.height, 0, duplicates, skipped, 0, store.watermark
        )

    folded = fold(fresh)
    current = store.get_states_frame(folded["player_id"].to_list())
    merged = merge(current, folded)
    store.put_states(merged, new_marks(fresh, merged, marks))
    report = MaterializeReport(
        events_in=events.height,
        events_applied=fresh.height,
        duplicates_in_input=duplicates,
        skipped=skipped,
        players_updated=merged.height,
        watermark=store.watermark,
    )
    logger.info(
        "materialised %d of %d events into %d players (%d duplicated in the input, "
        "%d at or before their player's newest applied event)",
        report.events_applied,
        report.events_in,
        report.players_updated,
        report.duplicates_in_input,
        report.skipped,
    )
    return report


def micro_batches(events: pl.DataFrame, size: int) -> Iterator[pl.DataFrame]:
    """Yield ``events`` in event-time order, ``size`` events at a time."""
    if size < 1:
        raise ValueError(f"micro-batch size {size} must be at least 1")
    ordered = events.sort("ts", "event_id")
    for start in range(0, ordered.height, size):
        yield ordered.slice(start, size)


def materialize_batches(
    events: pl.DataFrame, store: OnlineStore, batch_size: int
) -> MaterializeReport:
    """Materialise ``events`` one micro-batch at a time, in event-time order."""
    reports = [materialize(batch, store) for batch in micro_batches(events, batch_size)]
    updated = sum(report.players_updated for report in reports)
    return MaterializeReport(
        events_in=sum(report.events_in for report in reports),
        events_applied=sum(report.events_applied for report in reports),
        duplicates_in_input=sum(report.duplicates_in_input for report in reports),
        skipped=sum(report.skipped for report in reports),
        # Counted per batch, so a player updated by two batches counts twice.
        players_updated=updated,
        watermark=store.watermark,
    )

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

An event is identified by its player and its id, ``(player_id, event_id)``,
as the marks are: the reader and the offline fold keep events whose id
repeats across players, so sources that number events per player keep
every event here too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import polars as pl

from crmbet.errors import CrmbetError
from crmbet.features.online import AppliedMark, OnlineStore
from crmbet.features.state import fold, merge

logger = logging.getLogger(__name__)

#: Columns that identify one event: ids may repeat across players.
EVENT_KEY = ("player_id", "event_id")


@dataclass(frozen=True)
class MaterializeReport:
    """Counts of one materialisation run."""

    events_in: int
    events_applied: int
    #: Events whose player and id occurred earlier in the same input.
    duplicates_in_input: int
    #: Events at or before their player's newest applied event, not applied:
    #: a replay, or late events (see the module docstring).
    skipped: int
    players_updated: int
    watermark: float
    #: Skipped events strictly earlier than their player's newest applied
    #: event; with events applied in the same run they mean late data.
    skipped_earlier: int = 0


def _seconds(column: str = "ts") -> pl.Expr:
    # Same expression as the fold's event time, so marks compare bit for bit.
    return pl.col(column).dt.epoch("us").cast(pl.Float64) / 1e6


@dataclass(frozen=True)
class NewEvents:
    """The events of an input not applied yet, and counts of the others."""

    fresh: pl.DataFrame
    duplicates: int
    skipped: int
    #: Skipped events strictly earlier than their player's mark.
    skipped_earlier: int


def select_new_events(events: pl.DataFrame, marks: dict[str, AppliedMark]) -> NewEvents:
    """Return the events not applied yet and the counts of the others."""
    unique = events.unique(subset=list(EVENT_KEY), keep="first", maintain_order=True)
    repeated_in_input = events.height - unique.height
    if not marks:
        return NewEvents(unique, repeated_in_input, 0, 0)
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
    counts = tagged.select(
        is_new.sum().alias("new"), (pl.col("__t") < pl.col("__mark_ts")).sum()
    ).row(0)
    fresh = tagged.filter(is_new).select(events.columns)
    return NewEvents(fresh, repeated_in_input, unique.height - counts[0], counts[1])


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


class KeyFingerprintMismatchError(CrmbetError, ValueError):
    """Raised when events are materialised under another pseudonymisation key."""


def check_key_fingerprint(store: OnlineStore, fingerprint: str) -> None:
    """Raise when ``store`` was filled under a key other than ``fingerprint``.

    The same player maps to another pseudonym under another key, so
    materialising would store every player a second time.
    """
    stored = store.stored_key_fingerprint()
    if stored is None or stored == fingerprint:
        return
    raise KeyFingerprintMismatchError(
        f"the {store.backend} online store contains players pseudonymised with the "
        f"key of fingerprint {stored}, but CRMBET_PSEUDONYM_KEY has fingerprint "
        f"{fingerprint}; materialising would store every player a second time. "
        "Set CRMBET_PSEUDONYM_KEY to the original key, or materialise into a new "
        "store: another CRMBET_HOME for the embedded store, another Redis "
        "database or namespace for Redis"
    )


def materialize(
    events: pl.DataFrame, store: OnlineStore, key_fingerprint: str | None = None
) -> MaterializeReport:
    """Fold ``events`` into ``store`` once, merging with the stored states.

    Parameters
    ----------
    events:
        Canonical events (pseudonymised), in any order.
    store:
        The online store to update.
    key_fingerprint:
        Fingerprint of the pseudonymisation key of ``events``
        (``Pseudonymizer.fingerprint``). The store records it on the first
        write, and events under another key raise
        :class:`KeyFingerprintMismatchError`. None skips the check.
    """
    if key_fingerprint is not None:
        check_key_fingerprint(store, key_fingerprint)
    players = events["player_id"].unique().to_list() if events.height else []
    marks = store.applied_marks(players)
    selected = select_new_events(events, marks)
    fresh = selected.fresh
    if fresh.height == 0:
        logger.info(
            "none of %d events is new: %d were at or before their player's newest "
            "applied event and were skipped (a replay), %d repeated in the input",
            events.height,
            selected.skipped,
            selected.duplicates,
        )
        return MaterializeReport(
            events.height,
            0,
            selected.duplicates,
            selected.skipped,
            0,
            store.watermark,
            selected.skipped_earlier,
        )

    if key_fingerprint is not None and store.stored_key_fingerprint() is None:
        store.record_key_fingerprint(key_fingerprint)
    folded = fold(fresh)
    current = store.get_states_frame(folded["player_id"].to_list())
    merged = merge(current, folded)
    store.put_states(merged, new_marks(fresh, merged, marks))
    report = MaterializeReport(
        events_in=events.height,
        events_applied=fresh.height,
        duplicates_in_input=selected.duplicates,
        skipped=selected.skipped,
        players_updated=merged.height,
        watermark=store.watermark,
        skipped_earlier=selected.skipped_earlier,
    )
    _log_report(report)
    return report


def _log_report(report: MaterializeReport) -> None:
    logger.info(
        "materialised %d of %d events into %d players (%d repeated in the input, "
        "%d skipped: at or before their player's newest applied event)",
        report.events_applied,
        report.events_in,
        report.players_updated,
        report.duplicates_in_input,
        report.skipped,
    )
    if report.skipped_earlier:
        # New events beside events older than the mark: the input is not a
        # replay, so the older events arrived late and are lost.
        logger.warning(
            "%d events earlier than their player's newest applied event were "
            "skipped while %d new events were applied: unless the input repeats "
            "events applied before, they are late events, which are not applied; "
            "materialise each player's events in event-time order (see "
            "docs/feature-store.md, 'Known limits')",
            report.skipped_earlier,
            report.events_applied,
        )


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
        skipped_earlier=sum(report.skipped_earlier for report in reports),
        # Counted per batch, so a player updated by two batches counts twice.
        players_updated=updated,
        watermark=store.watermark,
    )

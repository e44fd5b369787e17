"""Feature-store commands under ``crmbet features``: materialize, get, pit."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import polars as pl
import typer
from rich.console import Console

if TYPE_CHECKING:
    from crmbet.config import Settings
    from crmbet.events.pseudonym import Pseudonymizer

console = Console()
#: Warnings and errors, on stderr so that the JSON on stdout stays parseable.
errors = Console(stderr=True)

SNAPSHOT_NAME = "online_store.parquet"


def _features_group(app: typer.Typer) -> typer.Typer:
    """Return the ``features`` sub-app of ``app``, creating it if missing."""
    for group in app.registered_groups:
        if group.name == "features" and group.typer_instance is not None:
            return group.typer_instance
    group_app = typer.Typer(
        help="Inspect and serve registered features.", no_args_is_help=True
    )
    app.add_typer(group_app, name="features")
    return group_app


InputOption = Annotated[
    Path, typer.Option("--input", "-i", help="Transactions file or folder.")
]
FormatOption = Annotated[
    str, typer.Option(help="auto, csv, parquet, jsonl or bustabit.")
]
MappingOption = Annotated[
    str | None,
    typer.Option(help="JSON mapping of canonical fields to source columns."),
]


def _read_events(
    input: Path,
    format: str,
    mapping: str | None,
    settings: Settings,
    pseudonymizer: Pseudonymizer | None = None,
) -> pl.DataFrame:
    """Read the transactions given by ``--input``, ``--format`` and ``--mapping``.

    Player ids are pseudonymised with ``pseudonymizer``, or with the
    configured key when None. Invalid records go to the dead letters under
    ``CRMBET_HOME``. When no record is valid, the command stops with exit
    status 1.
    """
    from crmbet.cli import parse_mapping
    from crmbet.training import read_source

    result = read_source(
        input,
        settings=settings,
        source_format=format,  # type: ignore[arg-type]
        mapping=parse_mapping(mapping),
        pseudonymizer=pseudonymizer,
    )
    invalid = result.dead_letters.height
    if result.events.height == 0 and invalid:
        errors.print(
            f"error: none of the {invalid:,} records in {input} is valid; the reason "
            f"for each is in the dead letters under {settings.home / 'dead_letters'}. "
            "Fix the source, or map its columns and labels with --mapping"
        )
        raise typer.Exit(1)
    if invalid:
        errors.print(
            f"{invalid:,} of {result.n_read:,} records in {input} are invalid and "
            f"were left out; reasons in {settings.home / 'dead_letters'}"
        )
    return result.events


def materialize_command(
    input: InputOption,
    format: FormatOption = "auto",
    mapping: MappingOption = None,
) -> None:
    """Fold events into the online store; replayed events are not counted twice."""
    from crmbet.config import get_settings
    from crmbet.features.materialize import materialize
    from crmbet.features.online import snapshot_lock
    from crmbet.features.store import open_backend
    from crmbet.training import pseudonymizer_from

    settings = get_settings()
    pseudonymizer = pseudonymizer_from(settings)
    events = _read_events(input, format, mapping, settings, pseudonymizer)
    if settings.redis_url is not None:
        store = open_backend(settings)
        report = materialize(events, store, pseudonymizer.fingerprint)
    else:
        # Read, merge and write the snapshot under a lock, so that a
        # concurrent run merges on top of this one instead of replacing it.
        snapshot = settings.home / SNAPSHOT_NAME
        with snapshot_lock(snapshot):
            store = open_backend(settings)
            report = materialize(events, store, pseudonymizer.fingerprint)
            store.snapshot(snapshot)  # type: ignore[attr-defined]
    console.print(
        f"materialised {report.events_applied:,} of {report.events_in:,} events into "
        f"{report.players_updated:,} players of the {store.backend} online store "
        f"({report.duplicates_in_input:,} repeated in the input; {report.skipped:,} "
        "skipped as at or before their player's newest applied event: a replay, "
        f"or late events, which are not applied); watermark {report.watermark:.0f}"
    )


def get_command(
    player: Annotated[
        list[str],
        typer.Option(
            "--player", "-p", help="Raw or pseudonymised player id; repeatable."
        ),
    ],
    view: Annotated[
        str,
        typer.Option(help="Feature view: all, segmentation or responsible_gambling."),
    ] = "all",
    as_of: Annotated[
        float | None,
        typer.Option(
            help="Unix time in seconds to read the features at; "
            "the store watermark by default."
        ),
    ] = None,
) -> None:
    """Show the online features of players, with status, tier and freshness."""
    from crmbet.config import get_settings
    from crmbet.features.store import EnterpriseFeatureStore, FeatureRequest
    from crmbet.training import pseudonymizer_from

    if as_of is not None:
        # Checked before the store opens, so a bad value costs no connection.
        try:
            FeatureRequest("", as_of=as_of)
        except ValueError as error:
            errors.print(f"error: --as-of: {error}")
            raise typer.Exit(2) from None
    blank = [name for name in player if not name.strip()]
    if blank:
        errors.print(
            "error: --player got an empty id; pass the player's id as it appears "
            "in the transactions, or its pseudonym"
        )
        raise typer.Exit(2)
    settings = get_settings()
    store = EnterpriseFeatureStore.from_settings(settings)
    pseudonymizer = pseudonymizer_from(settings)
    rows = []
    for raw in (name.strip() for name in player):
        pseudonym = pseudonymizer.pseudonymize(raw)
        response = store.get_features_sync(
            FeatureRequest(pseudonym, view=view, as_of=as_of)
        )
        if response.status[0] == "unknown":
            response = store.get_features_sync(
                FeatureRequest(raw, view=view, as_of=as_of)
            )
        values = response.row(0)
        freshness = float(response.freshness_seconds[0])
        rows.append(
            {
                "player": raw,
                "status": response.status[0],
                "tier": response.tier[0],
                "as_of": response.as_of,
                "freshness_seconds": None if math.isnan(freshness) else freshness,
                "features": values,
            }
        )
    console.print_json(json.dumps(rows))
    try:
        _explain_rows(rows, store, pseudonymizer.fingerprint)
    finally:
        store.close()


def _explain_rows(rows: list[dict], store: Any, fingerprint: str) -> None:
    """Warn on stderr about rows that need a word; exit 1 when none was served."""
    statuses = {row["status"] for row in rows}
    if statuses == {"unavailable"}:
        errors.print(
            "error: the online store was unreachable, so no player could be read; "
            "check that the server in CRMBET_REDIS_URL is running"
        )
        raise typer.Exit(1)
    # freshness_seconds is as_of minus the player's newest event time.
    leaked = [row["player"] for row in rows if (row["freshness_seconds"] or 0) < 0]
    if leaked:
        errors.print(
            f"warning: player(s) {', '.join(leaked)} have events after --as-of; "
            "the online store holds each player's newest state, so these values "
            "include those later events. Use 'crmbet features pit' for features "
            "at a past time"
        )
    if "unknown" in statuses:
        hint = _unknown_hint(store.backend, fingerprint)
        if hint:
            errors.print(hint)


def _unknown_hint(backend: Any, fingerprint: str) -> str | None:
    """Return why players may be unknown: an empty store, or another key."""
    try:
        if len(backend) == 0:
            return (
                f"hint: the {backend.backend} online store is empty; fill it with "
                "'crmbet features materialize'"
            )
        stored = backend.stored_key_fingerprint()
    except ConnectionError:
        return None
    if stored is not None and stored != fingerprint:
        return (
            f"hint: the online store was filled under the pseudonymisation key of "
            f"fingerprint {stored}, but CRMBET_PSEUDONYM_KEY has fingerprint "
            f"{fingerprint}; set CRMBET_PSEUDONYM_KEY to the key it was filled with"
        )
    return None


def pit_command(
    input: InputOption,
    queries: Annotated[
        Path, typer.Option(help="Parquet or CSV file with player_id and ts.")
    ],
    out: Annotated[
        Path, typer.Option(help="Parquet file to write the training set to.")
    ],
    pseudonymize: Annotated[
        bool,
        typer.Option(help="Pseudonymise the query player ids with the configured key."),
    ] = True,
    format: FormatOption = "auto",
    mapping: MappingOption = None,
) -> None:
    """Build a point-in-time training set: features from events before each row."""
    from crmbet.config import get_settings
    from crmbet.features.pit import point_in_time_features, read_queries
    from crmbet.training import pseudonymizer_from

    if out.is_dir():
        raise typer.BadParameter(
            f"--out {out} is a folder; name a Parquet file such as "
            f"{out / 'train.parquet'}"
        )
    settings = get_settings()
    table = read_queries(queries)
    events = _read_events(input, format, mapping, settings)
    if pseudonymize:
        table = pseudonymizer_from(settings).pseudonymize_column(table)
    result = point_in_time_features(events, table)
    out.parent.mkdir(parents=True, exist_ok=True)
    result.write_parquet(out)
    console.print(f"wrote {result.height:,} rows with point-in-time features to {out}")


def register(app: typer.Typer) -> None:
    """Add the feature-store commands to the ``features`` group of ``app``."""
    group = _features_group(app)
    group.command("materialize")(materialize_command)
    group.command("get")(get_command)
    group.command("pit")(pit_command)

"""Feature-store commands under ``crmbet features``: materialize, get, pit."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import polars as pl
import typer
from rich.console import Console

if TYPE_CHECKING:
    from crmbet.config import Settings

console = Console()

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
    input: Path, format: str, mapping: str | None, settings: Settings
) -> pl.DataFrame:
    """Read the transactions given by ``--input``, ``--format`` and ``--mapping``."""
    from crmbet.cli import parse_mapping
    from crmbet.training import read_source

    return read_source(
        input,
        settings=settings,
        source_format=format,  # type: ignore[arg-type]
        mapping=parse_mapping(mapping),
    ).events


def materialize_command(
    input: InputOption,
    format: FormatOption = "auto",
    mapping: MappingOption = None,
) -> None:
    """Fold events into the online store; replayed events are not counted twice."""
    from crmbet.config import get_settings
    from crmbet.features.materialize import materialize
    from crmbet.features.online import MemoryOnlineStore
    from crmbet.features.store import open_backend

    settings = get_settings()
    events = _read_events(input, format, mapping, settings)
    store = open_backend(settings)
    report = materialize(events, store)
    if isinstance(store, MemoryOnlineStore):
        store.snapshot(settings.home / SNAPSHOT_NAME)
    console.print(
        f"materialised {report.events_applied:,} of {report.events_in:,} events into "
        f"{report.players_updated:,} players of the {store.backend} online store "
        f"({report.duplicates_in_input:,} duplicated in the input, {report.skipped:,} "
        f"applied before); watermark {report.watermark:.0f}"
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

    settings = get_settings()
    store = EnterpriseFeatureStore.from_settings(settings)
    pseudonymizer = pseudonymizer_from(settings)
    rows = []
    for raw in player:
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
    store.close()
    console.print_json(json.dumps(rows))


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

"""``crmbet serve`` and the ``crmbet models`` commands.

The ``models`` commands change the aliases and routing tags in the registry
directly. A running server picks the change up at its next registry poll
(``CRMBET_REGISTRY_POLL_SECONDS``), or at once on ``POST /admin/models/reload``.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from crmbet.serving.settings import InsecureServerError, ServingSettings

logger = logging.getLogger(__name__)
console = Console()
models_app = typer.Typer(
    help="List registered models and route traffic between them.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    """Add ``serve`` and the ``models`` sub-commands to the crmbet command."""
    app.command()(serve)
    app.add_typer(models_app, name="models")


def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to bind; CRMBET_HOST.")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="TCP port; CRMBET_PORT, 8080.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes; CRMBET_WORKERS.")
    ] = None,
    allow_insecure: Annotated[
        bool,
        typer.Option(
            "--allow-insecure",
            help="Serve on a non-loopback address without admin authentication.",
        ),
    ] = False,
) -> None:
    """Serve predictions over HTTP (FastAPI on uvicorn)."""
    import os

    import uvicorn

    overrides: dict[str, Any] = {"host": host, "port": port, "workers": workers}
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if allow_insecure:
        overrides["allow_insecure"] = True
    serving = ServingSettings(**overrides)
    try:
        serving.check_startup()
    except InsecureServerError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from error
    # Workers build their app from the environment, so pass the overrides there.
    for key, value in overrides.items():
        os.environ[f"CRMBET_{key.upper()}"] = (
            str(value).lower() if isinstance(value, bool) else str(value)
        )
    loop, http = _event_loop_and_parser()
    logger.info(
        "serving on %s://%s:%d with %d worker(s) (%s, %s), admin auth %s",
        "https" if serving.tls_enabled else "http",
        serving.host,
        serving.port,
        serving.workers,
        loop,
        http,
        "on" if serving.auth_enabled else "off",
    )
    uvicorn.run(
        "crmbet.serving.app:create_app_from_env",
        factory=True,
        host=serving.host,
        port=serving.port,
        workers=serving.workers,
        ssl_certfile=str(serving.tls_cert_path) if serving.tls_cert_path else None,
        ssl_keyfile=str(serving.tls_key_path) if serving.tls_key_path else None,
        loop=loop,
        http=http,
        log_level="warning",
        # One log line per request costs more than a prediction under load.
        access_log=False,
    )


def _event_loop_and_parser() -> tuple[str, str]:
    """Return uvloop and httptools where installed, else asyncio and h11.

    uvicorn's "auto" picks the same, but naming them makes the choice
    visible in the startup log. Both are written in C and cost less per
    request than the pure-Python pair.
    """
    from importlib.util import find_spec

    loop = "uvloop" if find_spec("uvloop") is not None else "asyncio"
    http = "httptools" if find_spec("httptools") is not None else "h11"
    return loop, http


def _system() -> Any:
    from crmbet.serving.system import ModelServingSystem

    return ModelServingSystem(serving=ServingSettings(registry_poll_seconds=0))


def _show_routing(status: dict[str, Any]) -> None:
    routing = status["routing"]
    console.print(
        f"champion: version {status['champion']}, challenger: "
        f"{status['challenger'] or 'none'}, mode {routing['mode']}, "
        f"challenger traffic {routing['challenger_traffic']:.1%}"
    )


@models_app.command("list")
def list_models() -> None:
    """List every registered version with its aliases."""
    from crmbet.models.registry import ModelRegistry

    registry = ModelRegistry()
    table = Table(title=f"versions of {registry.model_name}")
    for column in ("version", "aliases", "segments", "silhouette"):
        table.add_column(column)
    for row in registry.versions():
        metrics = row["metrics"] if isinstance(row["metrics"], dict) else {}
        silhouette = metrics.get("silhouette")
        table.add_row(
            str(row["version"]),
            ", ".join(row["aliases"]),  # type: ignore[arg-type]
            str(row["segments"])[:60],
            f"{silhouette:.3f}" if silhouette is not None else "",
        )
    console.print(table)


@models_app.command("deploy-canary")
def deploy_canary(
    version: Annotated[str, typer.Argument(help="Registered version number.")],
    traffic: Annotated[float, typer.Option(help="Fraction of players, 0 to 1.")] = 0.05,
) -> None:
    """Send a fraction of the players to VERSION as a canary."""
    _show_routing(_system().deploy_canary(None, version, traffic))


@models_app.command("ab-test")
def ab_test(
    version: Annotated[str, typer.Argument(help="Registered version number.")],
    traffic: Annotated[
        float, typer.Option(help="Fraction of players for VERSION.")
    ] = 0.5,
) -> None:
    """Split the players between the champion and VERSION."""
    _show_routing(_system().start_ab_test(None, version, traffic))


@models_app.command("promote")
def promote() -> None:
    """Make the challenger the champion and send every player to it."""
    _show_routing(_system().promote())


@models_app.command("rollback")
def rollback() -> None:
    """Send every player back to the champion and drop the challenger."""
    _show_routing(_system().rollback())


@models_app.command("status")
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the champion, the challenger and the routing stored in the registry."""
    system = _system()
    system.refresh()
    state = system.get_system_status()
    if as_json:
        console.print_json(json.dumps(state, default=str))
    else:
        _show_routing(state)

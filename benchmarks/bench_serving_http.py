"""HTTP serving throughput and latency, against ``mlflow models serve``.

Trains the bustabit model into a temporary registry, starts ``crmbet serve``
and ``mlflow models serve --env-manager local`` on loopback ports, and loads
them with ``wrk`` (closed loop, for the maximum rate) and a small open-loop
asyncio client (fixed arrival rate, for the p99 latency). Every request
carries the player's features, so no feature-store lookup is measured.

Metrics: ``p99_ms_at_1000rps``, ``max_rps`` (peer ``mlflow models serve``),
both also with a 2 ms micro-batch timeout instead of the default 0,
``max_rps_without_microbatching``, the batch endpoint's predictions per
second (``batch_predictions_per_second`` with one list per feature,
``..._rows_body`` with one row per player, ``..._new_ids`` with new player
ids in every request, so no pseudonym comes from the server's cache) and
the in-process segment assignment time of the NumPy and ONNX Runtime paths.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

from services import free_port

ROOT = Path(__file__).resolve().parents[1]
BENCHMARK = "serving-http"
logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of this benchmark."""
    parser.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="Seconds of load per measurement (default 10).",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=64,
        help="wrk connections for the maximum rate (default 64).",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="Server worker processes, the same for both servers (default 2).",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=1000.0,
        help="Arrival rate in requests/s for the latency run (default 1000).",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=10_000,
        help="Players per /v1/predict/batch request (default 10000).",
    )
    parser.add_argument(
        "--skip-peer", action="store_true", help="Do not start mlflow models serve."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="3-second runs and a 2,000-player batch, for a smoke test.",
    )


def _record(
    metric: str,
    value: float,
    unit: str,
    peer: str | None = None,
    peer_value: float | None = None,
    **extra: object,
) -> dict[str, object]:
    return {
        "benchmark": BENCHMARK,
        "metric": metric,
        "value": round(value, 3),
        "unit": unit,
        "peer": peer,
        "peer_value": None if peer_value is None else round(peer_value, 3),
        **extra,
    }


def _train(home: Path) -> tuple[str, dict[str, float], list[str]]:
    os.environ["CRMBET_HOME"] = str(home)
    # Benchmark player ids are synthetic, so a fixed key is enough.
    os.environ.setdefault(
        "CRMBET_PSEUDONYM_KEY", "crmbet-benchmark-key-not-for-real-players"
    )
    from crmbet.config import get_settings
    from crmbet.events.adapters import bundled_bustabit_path, ingest
    from crmbet.features.definitions import compute_features
    from crmbet.models.risk import RISK_FEATURES
    from crmbet.training import pseudonymizer_from, train_from_events

    get_settings.cache_clear()
    settings = get_settings()
    events = ingest(
        bundled_bustabit_path(), pseudonymizer=pseudonymizer_from(settings)
    ).events
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train_from_events(events, settings=settings, k=6, register=True)
    names = list(dict.fromkeys([*result.model.feature_names, *RISK_FEATURES]))
    table = compute_features(result.states, names=names)
    row = table.row(table.height // 2, named=True)
    return str(result.version), {n: float(row[n]) for n in names}, names


@contextmanager
def _server(command: list[str], env: dict[str, str], ready_url: str) -> Iterator[None]:
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(
                    f"{command[:3]} exited: {log.read().decode()[-2000:]}"
                )
            try:
                if httpx.get(ready_url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command[:3]} not ready within 120 s")
            time.sleep(0.25)
        yield
    finally:
        _stop(process)
        log.close()


def _stop(process: subprocess.Popen[bytes]) -> None:
    # The server runs in its own session, so its worker processes stop with it.
    try:
        os.killpg(process.pid, 15)
        process.wait(timeout=20)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait()


def _wrk(url: str, body: bytes, duration: float, connections: int, tmp: Path) -> float:
    script = tmp / "post.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(body.decode())}\n"
    )
    output = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(int(duration), 1)}s",
            "-s",
            str(script),
            "--timeout",
            "5s",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if errors:
        raise RuntimeError(
            f"wrk got {errors.group(1)} error responses from {url}:\n{output}"
        )
    return float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]


async def _open_loop(
    port: int,
    path: str,
    body: bytes,
    rate: float,
    duration: float,
    connections: int = 32,
) -> np.ndarray:
    """Send requests at a fixed rate; latency counts from each scheduled time."""
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    total = int(rate * duration)
    start = time.perf_counter() + 0.2
    latencies = np.full(total, np.nan)
    next_index = 0

    async def connection() -> None:
        nonlocal next_index
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while next_index < total:
            index = next_index
            next_index += 1
            scheduled = start + index / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"request failed: {head[:80]!r}")
            latencies[index] = time.perf_counter() - scheduled
        writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    return latencies * 1000.0


def _batch_rate(
    url: str, body: bytes, players: int, duration: float, fresh_ids: bool = False
) -> float:
    """Post ``body`` back to back; ``fresh_ids`` gives each request new player ids.

    Fresh ids defeat the server's pseudonym cache: the ids' ``bench-`` prefix
    is replaced by a request counter of the same length, so the body size
    stays the same.
    """
    headers = {"Content-Type": "application/json"}
    with httpx.Client(timeout=60) as client:
        client.post(url, content=body, headers=headers).raise_for_status()
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < duration:
            content = body
            if fresh_ids:
                prefix = f'"{done // players % 100_000:05d}-'.encode()
                content = body.replace(b'"bench-', prefix)
            response = client.post(url, content=content, headers=headers)
            response.raise_for_status()
            done += players
        return done / (time.perf_counter() - start)


def _engine_timings(home: Path, version: str) -> list[dict[str, object]]:
    from crmbet.config import get_settings
    from crmbet.models.registry import ModelRegistry
    from crmbet.serving.engine import NumpyEngine, OnnxEngine

    registry = ModelRegistry(get_settings())
    model = registry.load(version)
    engines = [NumpyEngine(model), OnnxEngine(registry.load_onnx(version))]
    fill = np.asarray(
        model.pipeline.named_steps["impute"].statistics_, dtype=np.float64
    )
    records = []
    for size in (1, 64, 1024, 10_000):
        rows = np.tile(fill, (size, 1)) * np.random.default_rng(0).uniform(
            0.5, 1.5, (size, 1)
        )
        repeats = max(20, 20_000 // size)
        timings = {}
        for engine in engines:
            engine.assign(rows)
            start = time.perf_counter()
            for _ in range(repeats):
                engine.assign(rows)
            timings[engine.name] = (time.perf_counter() - start) / repeats * 1e6
        records.append(
            _record(
                f"assign_us_batch_{size}",
                timings["numpy"],
                "us",
                "onnxruntime",
                timings["onnx"],
            )
        )
    return records


def run(args: argparse.Namespace) -> list[dict[str, object]]:
    """Run the benchmark and return its records."""
    if shutil.which("wrk") is None:
        raise RuntimeError(
            "wrk is not installed; install it with 'apt-get install -y wrk'"
        )
    duration = 3.0 if args.quick else args.duration
    batch_size = 2_000 if args.quick else args.batch_size
    tmp = Path(tempfile.mkdtemp(prefix="crmbet-bench-serving-"))
    records: list[dict[str, object]] = []
    try:
        version, features, names = _train(tmp / "home")
        records += _engine_timings(tmp / "home", version)
        env = {
            **os.environ,
            "CRMBET_HOME": str(tmp / "home"),
            "CRMBET_REGISTRY_POLL_SECONDS": "0",
            "PYTHONPATH": os.pathsep.join(
                [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]
            ),
            "CRMBET_LOG_LEVEL": "WARNING",
            "CRMBET_MAX_BODY_BYTES": str(64 * 2**20),
        }
        single = json.dumps(
            {"player_id": "bench-player", "features": features}
        ).encode()
        rng = np.random.default_rng(0)
        columns = {
            n: (v * rng.uniform(0.5, 1.5, batch_size)).tolist()
            for n, v in features.items()
        }
        player_ids = [f"bench-{i}" for i in range(batch_size)]
        batches = {
            "features": json.dumps(
                {"player_ids": player_ids, "features": columns, "format": "columns"}
            ).encode(),
            "rows": json.dumps(
                {
                    "player_ids": player_ids,
                    "feature_names": list(columns),
                    "rows": [list(row) for row in zip(*columns.values(), strict=True)],
                    "format": "columns",
                }
            ).encode(),
        }
        records += _measure_crmbet(
            args, env, duration, single, batches, batch_size, tmp
        )
        if not args.skip_peer:
            peer = _measure_mlflow(args, env, duration, version, features, tmp)
            own = next(r for r in records if r["metric"] == "max_rps")
            own["peer"], own["peer_value"] = "mlflow models serve", round(peer, 3)
            own["ratio_to_peer"] = round(float(own["value"]) / peer, 2)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return records


def _crmbet(
    env: dict[str, str], workers: int, port: int, **extra: str
) -> Iterator[None]:
    command = [
        sys.executable,
        "-m",
        "crmbet",
        "serve",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    return _server(
        command, {**env, **extra}, f"http://127.0.0.1:{port}/v2/health/ready"
    )


def _measure_crmbet(
    args: argparse.Namespace,
    env: dict[str, str],
    duration: float,
    single: bytes,
    batches: dict[str, bytes],
    batch_size: int,
    tmp: Path,
) -> list[dict[str, object]]:
    records = []
    port = free_port()
    note = f"{args.workers} worker(s), wrk -t1 -c{args.connections}, {duration:.0f} s"
    with _crmbet(env, args.workers, port):
        url = f"http://127.0.0.1:{port}"
        rps = _wrk(f"{url}/v1/predict", single, duration, args.connections, tmp)
        records.append(_record("max_rps", rps, "requests/s", note=note))
        latencies = asyncio.run(
            _open_loop(port, "/v1/predict", single, args.rate, duration)
        )
        records.append(
            _record(
                "p99_ms_at_1000rps",
                float(np.nanpercentile(latencies, 99)),
                "ms",
                note=f"open loop at {args.rate:.0f} requests/s for {duration:.0f} s, "
                f"p50 {np.nanpercentile(latencies, 50):.2f} ms",
            )
        )
        records += _measure_batches(
            f"{url}/v1/predict/batch", batches, batch_size, duration
        )
    port = free_port()
    with _crmbet(env, args.workers, port, CRMBET_BATCH_TIMEOUT_MS="2"):
        rps = _wrk(
            f"http://127.0.0.1:{port}/v1/predict",
            single,
            duration,
            args.connections,
            tmp,
        )
        records.append(
            _record("max_rps_batch_timeout_2ms", rps, "requests/s", note=note)
        )
        latencies = asyncio.run(
            _open_loop(port, "/v1/predict", single, args.rate, duration)
        )
        records.append(
            _record(
                "p99_ms_at_1000rps_batch_timeout_2ms",
                float(np.nanpercentile(latencies, 99)),
                "ms",
                note=f"CRMBET_BATCH_TIMEOUT_MS=2, open loop at {args.rate:.0f} "
                f"requests/s for "
                f"{duration:.0f} s, p50 {np.nanpercentile(latencies, 50):.2f} ms",
            )
        )
    port = free_port()
    with _crmbet(env, args.workers, port, CRMBET_BATCH_MAX_SIZE="1"):
        rps = _wrk(
            f"http://127.0.0.1:{port}/v1/predict",
            single,
            duration,
            args.connections,
            tmp,
        )
        records.append(
            _record("max_rps_without_microbatching", rps, "requests/s", note=note)
        )
    return records


def _measure_batches(
    url: str, batches: dict[str, bytes], batch_size: int, duration: float
) -> list[dict[str, object]]:
    runs = [
        ("batch_predictions_per_second", "features", False, "one list per feature"),
        (
            "batch_predictions_per_second_rows_body",
            "rows",
            False,
            "feature_names with one row per player",
        ),
        (
            "batch_predictions_per_second_new_ids",
            "features",
            True,
            "one list per feature, new player ids in every request",
        ),
    ]
    records = []
    for metric, layout, fresh_ids, body_note in runs:
        rate = _batch_rate(url, batches[layout], batch_size, duration, fresh_ids)
        records.append(
            _record(
                metric,
                rate,
                "predictions/s",
                note=f"{batch_size} players per request, {body_note}, "
                "columns response format",
            )
        )
    return records


def _measure_mlflow(
    args: argparse.Namespace,
    env: dict[str, str],
    duration: float,
    version: str,
    features: dict[str, float],
    tmp: Path,
) -> float:
    from crmbet.config import get_settings

    settings = get_settings()
    port = free_port()
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    command = [
        mlflow,
        "models",
        "serve",
        "-m",
        f"models:/{settings.model_name}/{version}",
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-w",
        str(args.workers),
    ]
    # mlflow starts the uvicorn executable of the venv, so its bin folder goes on PATH.
    path = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    peer_env = {
        **env,
        "PATH": path,
        "MLFLOW_TRACKING_URI": settings.registry_uri,
        "MLFLOW_REGISTRY_URI": settings.registry_uri,
    }
    body = json.dumps(
        {
            "dataframe_split": {
                "columns": list(features),
                "data": [list(features.values())],
            }
        }
    ).encode()
    with _server(command, peer_env, f"http://127.0.0.1:{port}/ping"):
        return _wrk(
            f"http://127.0.0.1:{port}/invocations",
            body,
            duration,
            args.connections,
            tmp,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    print(json.dumps(run(parser.parse_args()), indent=2))

"""Local services the benchmarks start for themselves, on loopback only."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(process: subprocess.Popen, name: str, port: int) -> None:
    """Wait up to 15 s until ``process`` listens on ``port``; kill it otherwise."""
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(
                    f"{name} did not listen on port {port} within 15 s"
                ) from None
            time.sleep(0.05)


def start_redis() -> tuple[subprocess.Popen, int]:
    """Start a redis-server without persistence on a free loopback port."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed; apt-get install redis-server")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
        + ["--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(process, "redis-server", port)
    return process, port

"""Run one crmbet benchmark and write its results as JSON.

Usage::

    python benchmarks/run.py NAME [--json OUT] [benchmark options]

Each benchmark lives in ``benchmarks/bench_<name>.py`` (dashes become
underscores) and defines ``add_arguments(parser)`` and ``run(args)``, which
returns a list of ``{benchmark, metric, value, unit, peer, peer_value}``
records.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent


def available() -> list[str]:
    """Return the names of the benchmarks in this folder."""
    return sorted(
        p.stem.removeprefix("bench_").replace("_", "-") for p in HERE.glob("bench_*.py")
    )


def machine() -> str:
    """Describe the machine in one line for the results."""
    memory = psutil.virtual_memory().total / 2**30
    return (
        f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, "
        f"{memory:.0f} GiB, Python {platform.python_version()}"
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = available()
    if not argv or argv[0] not in [*names, "all"]:
        print(
            f"usage: run.py NAME [--json OUT] [options]; NAME is one of {names} or all",
            file=sys.stderr,
        )
        return 2
    chosen = names if argv[0] == "all" else [argv[0]]
    records = []
    for name in chosen:
        module = importlib.import_module(f"bench_{name.replace('-', '_')}")
        parser = argparse.ArgumentParser(prog=f"run.py {name}")
        parser.add_argument(
            "--json", type=Path, default=None, help="write results here"
        )
        module.add_arguments(parser)
        args = parser.parse_args(
            argv[1:]
            if argv[0] != "all"
            else [a for a in argv[1:] if a.startswith("--json")][:1]
        )
        results = module.run(args)
        for record in results:
            record.setdefault("machine", machine())
            print(json.dumps(record))
        records.extend(results)
    target = next(
        (Path(a.split("=", 1)[1]) for a in argv if a.startswith("--json=")), None
    )
    if target is None and "--json" in argv:
        target = Path(argv[argv.index("--json") + 1])
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(records, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())

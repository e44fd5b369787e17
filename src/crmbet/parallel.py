"""The number of cores this process may use, which sizes batch thread pools."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """Return the number of cores this process may run on, at least 1.

    On Linux this honours CPU affinity (taskset, container CPU sets). Other
    systems lack ``os.sched_getaffinity``, so there it is the machine's core
    count.
    """
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)

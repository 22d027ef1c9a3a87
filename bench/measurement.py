"""What every load benchmark needs around its measurement: room for thousands of sockets, and honest percentiles."""

from __future__ import annotations

import contextlib
import math
import resource
from collections.abc import Sequence


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to the hard limit: 5,000 sockets outgrow the usual 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile (no interpolation: a p99 is a latency some client really saw)."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]

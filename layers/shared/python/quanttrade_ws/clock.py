"""The wall clock, as every domain object and repository is given it.

One seam for time: the store, the service and the fan-out each take a `Clock`
(epoch seconds) when built, and none reads `time.time()` itself, so a test moves
all of them at once by handing them one settable clock.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def __call__(self) -> float:
        """Now, in epoch seconds."""
        ...


wall_clock: Clock = time.time

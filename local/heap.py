"""`freeze_startup_heap`: a long-lived process of the stack keeps what it built at startup out of the collector."""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Collect once, then move every object left to the collector's permanent generation.

    A full collection walks every object the collector tracks, and it stops the whole
    process while it does. What a stack process builds at startup (modules, botocore's
    models, moto's backends and the provisioned tables, the gateway's routes) lives as
    long as the process and is most of its objects: about 130,000 in the gateway and in
    moto each, measured with 1,000 clients on top at 217,000 and 181,000. With all of them
    walked, one full collection stopped the gateway for 214 ms in the middle of an event's
    fan-out, and moto for up to 189 ms while 1,000 clients subscribed. Frozen objects are
    still freed when their last reference goes; only a cycle among them would outlive
    its use, and startup builds none that it later drops.
    """
    gc.collect()
    gc.freeze()

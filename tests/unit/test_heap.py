"""`local.heap`: what a stack process built at startup leaves the cyclic collector's regular work."""

from __future__ import annotations

import gc
import weakref

from local.heap import freeze_startup_heap


class Node:
    other: object = None


def test_startup_garbage_is_collected_and_what_is_in_use_is_frozen() -> None:
    # GIVEN a cycle nobody references any more, and an object still in use
    a, b = Node(), Node()
    a.other, b.other = b, a
    garbage = weakref.ref(a)
    del a, b
    kept = Node()
    frozen_before = gc.get_freeze_count()
    try:
        # WHEN the startup heap is frozen
        freeze_startup_heap()

        # THEN the cycle was collected first (frozen, it would never be), and what is in use left the
        # generations a collection walks
        assert garbage() is None
        assert gc.get_freeze_count() > frozen_before
        assert not any(obj is kept for obj in gc.get_objects())
    finally:
        gc.unfreeze()
    assert any(obj is kept for obj in gc.get_objects())

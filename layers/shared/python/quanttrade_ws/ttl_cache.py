"""`TtlCache`: values per key that a warm function keeps for a few seconds (the fan-out's audiences)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class TtlCache:
    """Per-key values that expire after `seconds` in a warm function.

    Hot streams tick many times a second; their subscriber lists are read from
    DynamoDB at most once per `seconds`, which also bounds how long a new
    subscriber waits for its first message.
    """

    def __init__(self, seconds: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._monotonic = monotonic
        self._entries: dict[str, tuple[float, Any]] = {}

    def get(self, key: str, load: Callable[[], Any]) -> Any:
        value = self.peek(key)
        if value is None:
            read_at = self._monotonic()
            value = load()
            self.put(key, value, read_at)
        return value

    def peek(self, key: str) -> Any:
        """The value kept for `key`, or None when there is none or it has expired."""
        entry = self._entries.get(key)
        if entry is not None and entry[0] > self._monotonic():
            return entry[1]
        return None

    def put(self, key: str, value: Any, read_at: float) -> None:
        """Keep `value` for `seconds` from `read_at` (the monotonic time its read began)."""
        if self.seconds > 0:
            self._entries[key] = (read_at + self.seconds, value)

    def forget_connection(self, connection_id: str) -> None:
        """Drop a removed connection from every cached audience at once."""
        for key, (expires, value) in list(self._entries.items()):
            if isinstance(value, list):
                kept = [v for v in value if getattr(v, "connection_id", v) != connection_id]
                if len(kept) != len(value):
                    self._entries[key] = (expires, kept)

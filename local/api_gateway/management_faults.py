"""Faults injected into Management API calls on purpose, where API Gateway would produce them.

Rules (`ManagementFault`) take chosen calls: some connections or all, some
methods, some callers, the next N calls or until removed. Besides them, a
seeded share of all calls can be answered 429 or 500.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import hdrs

# What each kind of injected Management API fault answers: API Gateway's own status, error type and message.
THROTTLED = (429, "LimitExceededException", "Rate exceeded")
INTERNAL_ERROR = (500, "InternalServerErrorException", "Internal server error")
MANAGEMENT_FAULT_KINDS = ("throttle", "error", "delay")
MANAGEMENT_METHODS = frozenset({hdrs.METH_POST, hdrs.METH_GET, hdrs.METH_DELETE})


@dataclass
class ManagementFault:
    """One rule of injected Management API faults.

    `kind`: "throttle" answers 429 LimitExceededException (as API Gateway's
    account throttle does), "error" answers 500 InternalServerErrorException,
    "delay" holds the call `delay` seconds before serving it (a call whose
    caller hung up meanwhile, e.g. after its own timeout, is then dropped
    undelivered). It applies to calls with one of `methods` (posts by default)
    to `connections` (None: every connection) by a `caller` whose principal
    name contains it (a function's name or logical id; None: any caller), for
    the next `count` matching calls (None: until removed).

    Counters: `injected`, and per connection and per method.
    """

    kind: str
    connections: frozenset[str] | None = None
    methods: frozenset[str] = frozenset({hdrs.METH_POST})
    caller: str | None = None
    count: int | None = None
    delay: float = 0.0
    injected: int = 0
    by_connection: Counter[str] = field(default_factory=Counter)
    by_method: Counter[str] = field(default_factory=Counter)
    dropped: int = 0  # delayed calls whose caller was gone when the delay ended

    def __post_init__(self) -> None:
        if self.kind not in MANAGEMENT_FAULT_KINDS:
            raise ValueError(f"a Management API fault is one of {MANAGEMENT_FAULT_KINDS}, not {self.kind!r}")
        methods = frozenset(method.upper() for method in self.methods)
        if not methods or not methods <= MANAGEMENT_METHODS:
            raise ValueError(f"Management API faults apply to {sorted(MANAGEMENT_METHODS)}, not {sorted(methods)}")
        self.methods = methods
        if self.connections is not None:
            self.connections = frozenset(self.connections)
        if self.count is not None and self.count < 1:
            raise ValueError(f"a fault's count must be at least 1 (or None: until removed), not {self.count}")
        if (self.kind == "delay") != (self.delay > 0):
            raise ValueError("a delay fault needs a positive delay, and only a delay fault takes one")

    @property
    def exhausted(self) -> bool:
        return self.count is not None and self.injected >= self.count

    def matches(self, method: str, connection_id: str, caller: str) -> bool:
        if self.exhausted or method not in self.methods:
            return False
        if self.caller is not None and self.caller not in caller:
            return False
        return self.connections is None or connection_id in self.connections


class ManagementFaults:
    """The gateway's injected Management API faults: rules first, then a seeded share of all calls.

    Rules are added and removed from any thread (tests drive the stack from
    their own); the gateway's loop consults them.
    """

    def __init__(self, rate: float, seed: int | None) -> None:
        self.rules: list[ManagementFault] = []
        self._lock = threading.Lock()
        self.configure(rate, seed)

    def configure(self, rate: float, seed: int | None) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"the Management API fault rate must be within [0, 1], not {rate}")
        with self._lock:
            self.rate = rate
            self._random = random.Random(seed)
            self.counts: Counter[str] = Counter()

    def add(self, rule: ManagementFault) -> ManagementFault:
        with self._lock:
            self.rules.append(rule)
        return rule

    def remove(self, rule: ManagementFault) -> None:
        with self._lock:
            if rule in self.rules:
                self.rules.remove(rule)

    def pick(self, method: str, connection_id: str, caller: str) -> ManagementFault | tuple[int, str, str] | None:
        """The rule that takes this call, a random answer (status, type, message), or None to serve it."""
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, connection_id, caller):
                    rule.injected += 1
                    rule.by_connection[connection_id] += 1
                    rule.by_method[method] += 1
                    self.counts["delayed" if rule.kind == "delay" else answer_of(rule.kind)[1]] += 1
                    return rule
            if self.rate > 0.0 and self._random.random() < self.rate:
                answer = THROTTLED if self._random.random() < 0.5 else INTERNAL_ERROR
                self.counts[answer[1]] += 1
                return answer
        return None


def answer_of(kind: str) -> tuple[int, str, str]:
    """The answer (status, error type, message) a "throttle" or "error" rule gives."""
    return THROTTLED if kind == "throttle" else INTERNAL_ERROR

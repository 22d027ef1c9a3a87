"""A Lambda function: warm execution environments, cold starts, concurrency and billed duration."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.aws_model.profiles import Profile
from bench.aws_model.scheduler import Sim
from bench.aws_model.tally import Tally
from quanttrade_ws.fanout import EventFanOut


class LambdaFunction:
    """Warm execution environments, cold starts, concurrency and billed duration of one function."""

    def __init__(self, sim: Sim, profile: Profile, tally: Tally, name: str, memory_gb: float) -> None:
        self.sim = sim
        self.profile = profile
        self.tally = tally
        self.name = name
        self.memory_gb = memory_gb
        self.idle = 0
        self.running = 0
        self.fanout: EventFanOut | None = None

    def invoke(self, handler: Callable[[list[dict[str, Any]]], dict[str, Any]], records: list[dict[str, Any]]) -> dict:
        sim, profile = self.sim, self.profile
        self.running += 1
        self.tally.peak_concurrency[self.name] = max(self.tally.peak_concurrency[self.name], self.running)
        self.tally.invocations[self.name] += 1
        began = sim.now
        sim.sleep(profile.invoke.sample(sim.rng))
        if self.idle:
            self.idle -= 1
        else:
            self.tally.cold_starts += 1
            sim.sleep(profile.cold_start.sample(sim.rng))
        sim.sleep(profile.event_cpu_seconds * len(records))
        try:
            return handler(records)
        finally:
            self.tally.lambda_seconds[self.name] += (sim.now - began) * self.memory_gb
            self.running -= 1
            self.idle += 1

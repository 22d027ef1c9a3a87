"""The stage's health endpoints: `/health` (it serves) and `/ready` (everything behind it answers)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sized

from aiohttp import web

from local.api_gateway.config import GatewayConfig

ReadinessCheck = Callable[[], Awaitable[bool]]


class HealthEndpoints:
    """`/health` reports the open `connections` and the uptime; `/ready` runs every readiness check at once."""

    def __init__(self, config: GatewayConfig, connections: Sized, readiness_checks: Mapping[str, ReadinessCheck]):
        self.config = config
        self._connections = connections
        self._readiness_checks = dict(readiness_checks)
        self.started_at = 0.0  # monotonic; set when the server starts

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "status": "ok",
                "connections": len(self._connections),
                "uptime_seconds": round(time.monotonic() - self.started_at, 3),
                "stage": self.config.stage,
            }
        )

    async def ready(self, request: web.Request) -> web.Response:
        names = list(self._readiness_checks)
        results = await asyncio.gather(*(self._run_check(self._readiness_checks[name]) for name in names))
        checks = dict(zip(names, results, strict=True))
        failing = [name for name, result in checks.items() if result != "ok"]
        if failing:
            return web.json_response({"status": "not ready", "failing": failing, "checks": checks}, status=503)
        return web.json_response({"status": "ready", "checks": checks})

    async def _run_check(self, check: ReadinessCheck) -> str:
        try:
            healthy = await asyncio.wait_for(check(), timeout=self.config.ready_check_timeout)
        except TimeoutError:
            return f"timed out after {self.config.ready_check_timeout:g}s"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return "ok" if healthy else "unhealthy"

"""What the local stack can be asked to change (`StackConfig`), and the names it gives what it runs."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from local.api_gateway.config import GatewayConfig
from local.cloud.assembly import CloudAssembly
from local.cloud.resources.api_gateway import Api
from local.lambda_runtime.environment import DEFAULT_ACCOUNT
from local.lambda_runtime.pool import DEFAULT_IDLE_LIMIT_SECONDS
from local.moto_dynamodb import DEFAULT_TTL_SWEEP_SECONDS
from local.moto_server import Mode

# What `cdk deploy --outputs-file` would write, for `python -m local ...` to find the running stack.
OUTPUTS_FILE = Path(__file__).resolve().parents[2] / ".build" / "local" / "outputs.json"
LOCAL_API_ID = "qtlocalapi"
ADMIN_API_ID = "qtlocaladmin"  # the admin HTTP API's id in execute-api ARNs (its stage is $default)
# The sweeper's schedule comes from the template's rule unless a number (seconds) or None (never) is given.
SCHEDULED: Literal["template"] = "template"
# Where StackConfig.faults can inject: the functions' AWS services, and the Management API.
MANAGEMENT_FAULTS = "management"
FAULT_TARGETS = ("dynamodb", "sqs", MANAGEMENT_FAULTS)


class StackStartError(RuntimeError):
    """The template would not work on AWS (or could not be run here): what failed, and in which function."""


_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


@dataclass(frozen=True)
class StackConfig:
    """What `python -m local dev` and the e2e fixtures can change. Defaults are `make dev`'s."""

    host: str = "127.0.0.1"
    gateway_port: int = 8081  # 0: a free port
    moto_port: int = 4566  # 0: a free port
    moto_mode: Mode = "subprocess"
    region: str = "us-east-1"
    jwt_secret: str | None = None  # None: $QT_JWT_SECRET, else the value the secret's GenerateSecretString makes
    idle_timeout: float = 600.0
    max_connection_seconds: float = 7200.0
    management_rate_per_second: float = 10_000.0
    connect_rate_per_second: float | None = 500.0
    simulator: bool = False
    simulator_rate: float = 6.0
    sweep_interval: float | Literal["template"] | None = SCHEDULED
    # How often moto deletes items whose TTL has passed, as DynamoDB's TTL does (None: never).
    ttl_sweep_seconds: float | None = DEFAULT_TTL_SWEEP_SECONDS
    # How long a function's execution environment may stay idle before it is shut down, as Lambda does (0: never).
    environment_idle_seconds: float = DEFAULT_IDLE_LIMIT_SECONDS
    # None: each queue's visibility timeout from the template (60 s). Tests shorten it so a failed record
    # (its FIFO group held back until the timeout, as on AWS) is retried within a test's patience.
    queue_visibility_timeout: int | None = None
    log_level: str = "WARNING"  # the functions' log lines shown on this console (they log at the template's level)
    dashboard: bool = True
    # CDK context for the synthesis, as `-c key=value`; `settings_overrides` is the `settings` key's JSON.
    context: Mapping[str, str] = field(default_factory=dict)
    settings_overrides: dict[str, Any] = field(default_factory=dict)
    assembly: CloudAssembly | None = None  # run this assembly as it is instead of synthesizing one
    smoke: bool = True  # invoke every function with its samples in events/ before serving
    # AWS's own error responses injected at these rates: into the functions' calls by service ("dynamodb",
    # "sqs", through the front door) and into Management API calls ("management": 429 or 500 from the gateway).
    faults: Mapping[str, float] = field(default_factory=dict)
    fault_seed: int | None = None

    def __post_init__(self) -> None:
        for name, rate in self.faults.items():
            if name not in FAULT_TARGETS:
                raise ValueError(f"faults can be injected into {', '.join(FAULT_TARGETS)}, not {name!r}")
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"the fault rate for {name} must be within [0, 1], not {rate}")

    def aws_fault_rates(self) -> dict[str, float]:
        """The rates the front door injects into the functions' AWS calls."""
        return {name: rate for name, rate in self.faults.items() if name != MANAGEMENT_FAULTS}

    def secret(self) -> str | None:
        return self.jwt_secret or os.environ.get("QT_JWT_SECRET") or None

    def synth_context(self) -> dict[str, str]:
        context = dict(self.context)
        overrides = dict(self.settings_overrides)
        if self.idle_timeout != 600.0:
            overrides.setdefault("idle_timeout_seconds", max(1, int(self.idle_timeout)))
        if overrides:
            context["settings"] = json.dumps(overrides, sort_keys=True)
        return context

    def gateway_config(self, websocket_api: Api, identity_sources: tuple[str, ...]) -> GatewayConfig:
        """The template's WebSocket stage (`websocket_api`) with this stack's host, port, limits and faults."""
        return GatewayConfig(
            host=self.host,
            port=self.gateway_port,
            stage=websocket_api.stage_name,
            region=self.region,
            account=DEFAULT_ACCOUNT,
            api_id=LOCAL_API_ID,
            idle_timeout=self.idle_timeout,
            max_connection_seconds=self.max_connection_seconds,
            management_rate_per_second=self.management_rate_per_second,
            connect_rate_per_second=self.connect_rate_per_second,
            identity_sources=identity_sources,
            route_selection_expression=websocket_api.route_selection_expression or "$request.body.action",
            management_fault_rate=self.faults.get(MANAGEMENT_FAULTS, 0.0),
            management_fault_seed=self.fault_seed,
        )

"""The settings of one local WebSocket API stage."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from local.lambda_runtime.environment import DEFAULT_ACCOUNT, DEFAULT_REGION


@dataclass(frozen=True)
class GatewayConfig:
    """One stage of the WebSocket API. Defaults are API Gateway's own quotas."""

    host: str = "127.0.0.1"
    port: int = 8081  # 0 picks a free port; `LocalGateway.port` tells which
    stage: str = "local"
    region: str = DEFAULT_REGION
    account: str = DEFAULT_ACCOUNT
    api_id: str = "qtlocalapi"
    domain_name: str | None = None  # None: the Host header the client connected with
    max_message_bytes: int = 128 * 1024
    max_frame_bytes: int | None = 32 * 1024  # None: only the message size is limited
    idle_timeout: float = 600.0
    max_connection_seconds: float = 7200.0
    close_timeout: float = 3.0  # how long a closing handshake may take before the socket is dropped
    # How long stopping the gateway waits for the `$disconnect` of every connection it closes; what is
    # still running then is abandoned (on AWS `$disconnect` is best effort too), so a stop stays bounded:
    # with the simulator's 2 s and moto's 1.5 s, Ctrl-C ends the stack within 10 s.
    stop_disconnect_seconds: float = 4.0
    management_rate_per_second: float = 10_000.0
    management_burst: int | None = None  # None: one second's worth
    connect_rate_per_second: float | None = 500.0  # new connections; None: unlimited
    client_buffer_bytes: int = 4 * 1024 * 1024  # unsent bytes to a client before posts get 429
    two_way_routes: frozenset[str] = frozenset()  # routes with a route response: the handler's body goes back
    identity_sources: tuple[str, ...] = ("route.request.querystring.token",)
    route_selection_expression: str = "$request.body.action"  # only $request.body.<field> is supported
    pool_sizes: Mapping[str, int] = field(default_factory=dict)  # function name -> worker threads
    default_pool_size: int = 8
    default_timeout_seconds: float = 10.0
    ready_check_timeout: float = 2.0
    management_fault_rate: float = 0.0  # share of Management API calls answered 429 or 500 on purpose
    management_fault_seed: int | None = None

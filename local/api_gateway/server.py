"""`LocalGateway`: one WebSocket API stage and its Management API on one port (aiohttp, and a fast path for posts)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

from aiohttp import hdrs, web
from aiohttp.web_response import StreamResponse

from local.api_gateway.access_log import HttpAccessLogger, access_logger, server_logger
from local.api_gateway.authorizer import RequestAuthorizer, parse_identity_source
from local.api_gateway.config import GatewayConfig
from local.api_gateway.health import HealthEndpoints, ReadinessCheck
from local.api_gateway.management_api import ManagementApi, ManagementCall
from local.api_gateway.management_fast_path import ManagementFastPath
from local.api_gateway.management_faults import ManagementFault
from local.api_gateway.turn_writes import TurnWrites
from local.api_gateway.websocket_stage import WebSocketStage
from local.lambda_runtime.function import LambdaFunction
from local.lambda_runtime.in_process import Handler
from local.principals import Principals

logger = logging.getLogger("quanttrade.local.gateway")

HttpHandler = Callable[[web.Request], Awaitable[StreamResponse]]

STOP_HANDLER_GRACE_SECONDS = 0.5  # see LocalGateway.start


class LocalGateway:
    """An API Gateway WebSocket API stage with its Management API, served by one aiohttp app.

    Connections start on the Management API's fast path (`management_fast_path`), which answers plain
    Management API calls itself and hands every other connection to the app.

    `handlers` maps route keys (`$connect`, `$disconnect`, `$default`, actions)
    to `LambdaFunction`s or plain `handler(event, context)` callables; plain
    callables get a pool of their own (one per callable, shared by the routes
    it serves). `authorizer` is the `$connect` REQUEST authorizer; without one,
    no identity source is required.

    Extra HTTP surface: `root_handler` answers a plain GET of `/` (the WebSocket
    endpoint's path), `extra_routes` are added after the gateway's own routes
    (so a `web.static("/", ...)` catch-all does not shadow them), and `app` is
    the aiohttp application for anything else, until `start()` freezes it.
    """

    def __init__(
        self,
        config: GatewayConfig | None = None,
        handlers: Mapping[str, LambdaFunction | Handler] | None = None,
        authorizer: LambdaFunction | Handler | None = None,
        *,
        readiness_checks: Mapping[str, ReadinessCheck] | None = None,
        root_handler: HttpHandler | None = None,
        extra_routes: Iterable[web.AbstractRouteDef] = (),
        principals: Principals | None = None,
    ) -> None:
        config = config or GatewayConfig()
        self._config = config
        self._owned: list[LambdaFunction] = []
        wrapped: dict[int, LambdaFunction] = {}
        routes = {key: self._as_function(key, handler, wrapped) for key, handler in (handlers or {}).items()}
        identity_sources = tuple(parse_identity_source(source) for source in config.identity_sources)
        self._authorizer = (
            None
            if authorizer is None
            else RequestAuthorizer(self._as_function("authorizer", authorizer, wrapped), identity_sources)
        )
        self._routes = routes
        # The gateway's bursts of writes (posted frames, the Management API's answers) go out once per turn.
        self._writes = TurnWrites()
        self._stage = WebSocketStage(config, routes, self._authorizer, self._writes)
        # Who may call the Management API (SigV4 + execute-api:ManageConnections); default: the local admin only.
        self._management_api = ManagementApi(
            config,
            principals or Principals(config.account),
            self._stage.connections,
            self._stage.request_close,
            self._writes,
        )
        self._health = HealthEndpoints(config, self._stage.connections, readiness_checks or {})
        self._root_handler = root_handler
        self._runner: web.AppRunner | None = None
        self._fast_path: ManagementFastPath | None = None
        self._port: int | None = None
        self._app = self._build_app(extra_routes)

    # ------------------------------------------------------------ what it is and where

    @property
    def config(self) -> GatewayConfig:
        return self._config

    @config.setter
    def config(self, config: GatewayConfig) -> None:
        """A replaced config applies from now on: to timers as they are armed, to throttling, to new connections."""
        self._config = config
        self._stage.config = config
        self._management_api.config = config
        self._health.config = config

    @property
    def principals(self) -> Principals:
        return self._management_api.principals

    @property
    def app(self) -> web.Application:
        return self._app

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the gateway is not started")
        return self._port

    @property
    def url(self) -> str:
        """The WebSocket endpoint clients connect to."""
        return f"ws://{self._url_host}:{self.port}/"

    @property
    def http_url(self) -> str:
        return f"http://{self._url_host}:{self.port}"

    @property
    def management_endpoint(self) -> str:
        """The Management API endpoint, shaped like AWS's `https://{domain}/{stage}`; the bare origin works too."""
        return f"{self.http_url}/{self.config.stage}"

    @property
    def connection_ids(self) -> list[str]:
        return list(self._stage.connections)

    @property
    def functions(self) -> dict[str, LambdaFunction]:
        """Route key (and "authorizer") -> the function serving it."""
        functions = dict(self._routes)
        if self._authorizer is not None:
            functions["authorizer"] = self._authorizer.function
        return functions

    @property
    def management_calls(self) -> deque[ManagementCall]:
        """The last Management API calls (at most `management_api.RECORDED_CALLS`) and their statuses."""
        return self._management_api.calls

    @property
    def fast_path_handovers(self) -> int:
        """Connections the Management API's fast path handed to aiohttp (see `management_fast_path`)."""
        return 0 if self._fast_path is None else self._fast_path.handed_over

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("the gateway is already started")
        runner = web.AppRunner(
            self._app,
            access_log_class=HttpAccessLogger,
            access_log=access_logger,
            logger=server_logger,
            # By the time the runner stops, `stop` has waited for every connection its budget allows: what
            # is still running is abandoned work, cancelled after this grace rather than the 60 s default.
            shutdown_timeout=STOP_HANDLER_GRACE_SECONDS,
        )
        await runner.setup()
        assert runner.server is not None
        sock = _bind(self.config.host, self.config.port)
        self._port = sock.getsockname()[1]
        self._fast_path = ManagementFastPath(self._management_api, runner.server, self._writes)
        await _GatewaySite(runner, sock, self._fast_path).start()
        self._runner = runner
        self._health.started_at = time.monotonic()
        logger.info("local gateway listening on %s (management API %s)", self.url, self.management_endpoint)

    async def stop(self) -> None:
        """Close every connection (each gets its `$disconnect`), then stop serving."""
        if self._runner is None:
            self._release_functions()
            return
        if self._stage.stopping:
            return
        self._stage.stopping = True
        deadline = time.monotonic() + self.config.stop_disconnect_seconds
        await self._stage.close_all()
        await self._runner.cleanup()
        if self._fast_path is not None:
            self._fast_path.close()
            self._fast_path = None
        await self._stage.wait_for_finishing(deadline)
        self._release_functions()
        self._runner = None
        self._stage.stopping = False  # a stopped gateway can be started again (a gateway restart)
        logger.info("local gateway stopped")

    def _release_functions(self) -> None:
        for function in self._owned:
            function.shutdown(wait=False)
        self._owned.clear()

    async def __aenter__(self) -> LocalGateway:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ------------------------------------------------------------ injected Management API faults

    def add_management_fault(
        self,
        kind: str,
        *,
        connections: Iterable[str] | None = None,
        methods: Iterable[str] = (hdrs.METH_POST,),
        caller: str | None = None,
        count: int | None = None,
        delay: float = 0.0,
    ) -> ManagementFault:
        """From now on, answer matching Management API calls with a fault (see `ManagementFault`); the rule."""
        rule = ManagementFault(
            kind,
            connections=None if connections is None else frozenset(connections),
            methods=frozenset(methods),
            caller=caller,
            count=count,
            delay=delay,
        )
        return self._management_api.faults.add(rule)

    def remove_management_fault(self, rule: ManagementFault) -> None:
        self._management_api.faults.remove(rule)

    @contextlib.contextmanager
    def management_fault(self, kind: str, **options: Any) -> Iterator[ManagementFault]:
        """`add_management_fault` for the duration of a `with` block."""
        rule = self.add_management_fault(kind, **options)
        try:
            yield rule
        finally:
            self.remove_management_fault(rule)

    @property
    def management_faults(self) -> list[ManagementFault]:
        return list(self._management_api.faults.rules)

    def configure_management_faults(self, rate: float, seed: int | None = None) -> None:
        """Answer this share of all Management API calls with 429 or 500 from now on (0: none); counters restart."""
        self._management_api.faults.configure(rate, seed)

    def management_fault_counts(self) -> dict[str, int]:
        """What was injected so far: error type (or "delayed") -> calls."""
        return dict(self._management_api.faults.counts)

    # ------------------------------------------------------------ the app

    def _build_app(self, extra_routes: Iterable[web.AbstractRouteDef]) -> web.Application:
        # Bodies bigger than a message are refused by the Management API itself (413 with
        # API Gateway's error shape); this only bounds what aiohttp will buffer.
        app = web.Application(client_max_size=max(1024 * 1024, self.config.max_message_bytes + 1))
        app.router.add_get("/", self._handle_root)
        app.router.add_get("/health", self._health.health)
        app.router.add_get("/ready", self._health.ready)
        app.router.add_route("*", "/@connections/{connection_id}", self._management_api.handle)
        app.router.add_route("*", "/{stage}/@connections/{connection_id}", self._management_api.handle)
        app.router.add_routes(list(extra_routes))
        return app

    async def _handle_root(self, request: web.Request) -> StreamResponse:
        if request.headers.get(hdrs.UPGRADE, "").lower() != "websocket":
            if self._root_handler is not None:
                return await self._root_handler(request)
            return web.Response(status=426, text="Upgrade Required", headers={hdrs.UPGRADE: "websocket"})
        return await self._stage.serve(request)

    def _as_function(
        self, route_key: str, handler: LambdaFunction | Handler, wrapped: dict[int, LambdaFunction]
    ) -> LambdaFunction:
        if isinstance(handler, LambdaFunction):
            return handler
        function = wrapped.get(id(handler))
        if function is None:
            name = getattr(handler, "__name__", route_key.lstrip("$"))
            function = LambdaFunction(
                name,
                handler,
                timeout_seconds=self.config.default_timeout_seconds,
                concurrency=self.config.pool_sizes.get(name, self.config.default_pool_size),
                region=self.config.region,
                account=self.config.account,
            )
            wrapped[id(handler)] = function
            self._owned.append(function)
        return function

    @property
    def _url_host(self) -> str:
        host = self.config.host
        if host in ("0.0.0.0", ""):
            return "127.0.0.1"
        if host == "::":
            return "[::1]"
        return f"[{host}]" if ":" in host else host


class _GatewaySite(web.SockSite):
    """aiohttp's site for a bound socket, whose connections start on the Management API's fast path."""

    def __init__(self, runner: web.AppRunner, sock: socket.socket, fast_path: ManagementFastPath) -> None:
        super().__init__(runner, sock)
        self._fast_path = fast_path

    async def start(self) -> None:
        self._runner._reg_site(self)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._fast_path, sock=self._sock, backlog=self._backlog)


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    # A restarted local stack must get its port back at once, not after TIME_WAIT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.setblocking(False)
    return sock

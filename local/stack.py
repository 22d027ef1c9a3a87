"""The whole backend on one machine: moto, the gateway emulator, the handlers, the pumps, the simulator.

One asyncio program plays AWS:

* moto in server mode as DynamoDB, SQS and EventBridge (`local.moto_server`),
  provisioned from the topology by `local.provision`, the same declarations
  the CDK stack deploys;
* the API Gateway WebSocket stage and its Management API (`local.gateway`),
  routing to the product's handlers as Lambda functions (`local.lambda_runtime`),
  plus the admin HTTP API under `/admin/...`, the dashboard at `/`, `/health`
  and `/ready`;
* one SQS pump per queue-triggered function (`local.pump`), the event source
  mappings;
* the scheduled sweeper, and optionally the market simulator (`local.simulator`).

The handlers read their settings from the environment, as on Lambda, so the
stack sets `os.environ` before they are first invoked (and restores it when
it stops), and clears the cached `runtime()` so a restarted stack in the same
process does not reuse the clients of the previous one. Two stacks cannot run
in one process at once for that reason.

moto runs as a subprocess by default: it keeps moto's CPU off the interpreter
that runs the gateway and the handlers (numbers in `local/moto_server.py`).
Throughput is bounded by moto, not by the pump or the gateway: about 20 to 25
upstream events a second through PutEvents and about 8 a second through
fan-out for a burst of 300 on the 2-core development machine (moto's EventBridge parses each
rule's target per event, and its SQS recounts the queue on every send), so
the simulator's default of 6 ticks a second leaves headroom.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from local.gateway import GatewayConfig, LocalGateway, authorizer_from_topology, handlers_from_topology
from local.lambda_runtime import DEFAULT_ACCOUNT, LambdaFunction
from local.moto_server import Mode, MotoServer
from local.provision import QueueUrls, table_name
from local.pump import QueuePump, pumps_from_topology
from local.simulator import MarketSimulator
from quanttrade_ws import topology
from quanttrade_ws.auth import ALL_PERMISSIONS, mint_token
from quanttrade_ws.config import Settings

logger = logging.getLogger("quanttrade.local.stack")

DEV_SECRET = "dev-secret"
DASHBOARD_DIR = Path(__file__).parent / "dashboard"
ADMIN_PREFIX = "/admin"


@dataclass(frozen=True)
class StackConfig:
    """What `python -m local dev` and the e2e fixtures can change. Defaults are `make dev`'s."""

    host: str = "127.0.0.1"
    gateway_port: int = 8081  # 0: a free port
    moto_port: int = 4566  # 0: a free port
    moto_mode: Mode = "subprocess"
    region: str = "us-east-1"
    jwt_secret: str | None = None  # None: $QT_JWT_SECRET, else the development secret
    idle_timeout: float = 600.0
    max_connection_seconds: float = 7200.0
    management_rate_per_second: float = 10_000.0
    connect_rate_per_second: float | None = 500.0
    simulator: bool = False
    simulator_rate: float = 6.0
    sweep_interval: float | None = 300.0  # the sweeper's schedule; None: never
    # None: each queue's visibility timeout from the topology (60 s). Tests shorten it so a failed record
    # (its FIFO group held back until the timeout, as on AWS) is retried within a test's patience.
    queue_visibility_timeout: int | None = None
    log_level: str = "WARNING"  # the handlers' Powertools log level
    dashboard: bool = True
    settings_overrides: dict[str, Any] = field(default_factory=dict)  # any other Settings field

    def secret(self) -> str:
        return self.jwt_secret or os.environ.get("QT_JWT_SECRET") or DEV_SECRET


class LocalStack:
    """Start with `await stack.start()` (or `async with`), stop with `await stack.stop()`."""

    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig()
        self.secret = self.config.secret()
        self.moto = MotoServer(
            self.config.host, self.config.moto_port, mode=self.config.moto_mode, region=self.config.region
        )
        self.settings: Settings | None = None
        self.queues: dict[str, QueueUrls] = {}
        self.gateway: LocalGateway | None = None
        self.pumps: list[QueuePump] = []
        self.simulator: MarketSimulator | None = None
        self.functions: dict[str, LambdaFunction] = {}  # topology name -> function
        self._saved_environ: dict[str, str | None] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._started = False

    # ------------------------------------------------------------------ addresses

    @property
    def websocket_url(self) -> str:
        return self._gateway().url

    @property
    def http_url(self) -> str:
        return self._gateway().http_url

    @property
    def management_endpoint(self) -> str:
        return self._gateway().management_endpoint

    @property
    def dashboard_url(self) -> str:
        return f"{self.http_url}/"

    @property
    def aws_endpoint_url(self) -> str:
        return self.moto.endpoint_url

    def _gateway(self) -> LocalGateway:
        if self.gateway is None:
            raise RuntimeError("the local stack is not started")
        return self.gateway

    def token(self, user_id: str = "dev-user", **claims: Any) -> str:
        """An access token this stack accepts (every permission, premium level, 24 hours, unless told)."""
        claims.setdefault("permissions", ALL_PERMISSIONS)
        return mint_token(self.secret, user_id, **claims)

    def client(self, service: str) -> Any:
        """A boto3 client for this stack's moto (dynamodb, sqs, events) or Management API (apigatewaymanagementapi)."""
        if service == "apigatewaymanagementapi":
            import boto3

            from local.moto_server import CREDENTIALS

            make_client: Any = boto3.client
            return make_client(
                service, region_name=self.config.region, endpoint_url=self.management_endpoint, **CREDENTIALS
            )
        return self.moto.client(service)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> LocalStack:
        if self._started:
            return self
        if self.secret == DEV_SECRET:
            logger.warning(
                "QT_JWT_SECRET is not set: using the development secret %r (never use it elsewhere)", DEV_SECRET
            )
        self._started = True
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.moto.start)
        settings = Settings(
            region=self.config.region,
            jwt_secret=self.secret,
            aws_endpoint_url=self.moto.endpoint_url,
            idle_timeout_seconds=max(1, int(self.config.idle_timeout)),
            log_level=self.config.log_level,
            # Session tokens have a key of their own. Nothing outside this stack checks them, and the
            # sessions they name live in moto's memory, so a fresh key per start is enough.
            **{"session_secret": secrets.token_urlsafe(32), **self.config.settings_overrides},
        )
        self.settings, self.queues = await loop.run_in_executor(None, self.moto.provision, settings)
        if self.config.queue_visibility_timeout is not None:
            await loop.run_in_executor(None, self._shorten_visibility, self.config.queue_visibility_timeout)

        gateway_config = GatewayConfig(
            host=self.config.host,
            port=self.config.gateway_port,
            region=self.config.region,
            account=DEFAULT_ACCOUNT,
            idle_timeout=self.config.idle_timeout,
            max_connection_seconds=self.config.max_connection_seconds,
            management_rate_per_second=self.config.management_rate_per_second,
            connect_rate_per_second=self.config.connect_rate_per_second,
        )
        routes = handlers_from_topology(gateway_config)
        for function in routes.values():
            self.functions[function.name.removeprefix("quanttrade-")] = function
        authorizer = authorizer_from_topology(gateway_config)
        self.functions[topology.AUTHORIZER.name] = authorizer
        for declaration in (topology.FANOUT, topology.DELIVERY, topology.SWEEPER, topology.ADMIN):
            self.functions[declaration.name] = LambdaFunction.from_topology(declaration, region=self.config.region)

        # The handlers must see the environment before their first invocation; with a fixed port it can be
        # complete before the gateway accepts anything.
        if self.config.gateway_port:
            self._apply_environment(f"http://{self.config.host}:{self.config.gateway_port}/{gateway_config.stage}")
        self.gateway = LocalGateway(
            gateway_config,
            routes,
            authorizer,
            readiness_checks={"moto": self._moto_answers, "tables": self._tables_exist, "queues": self._queues_exist},
            root_handler=self._serve_dashboard if self.config.dashboard else None,
            extra_routes=self._extra_routes(),
        )
        await self.gateway.start()
        self._apply_environment(self.gateway.management_endpoint)

        pump_options: dict[str, Any] = {}
        if self.config.queue_visibility_timeout is not None:
            pump_options["visibility_timeout"] = self.config.queue_visibility_timeout
        self.pumps = pumps_from_topology(
            self.functions, self.queues, lambda: self.moto.client("sqs"), region=self.config.region, **pump_options
        )
        for pump in self.pumps:
            pump.start()
        if self.config.sweep_interval:
            self._sweeper = loop.create_task(self._sweep_every(self.config.sweep_interval), name="sweeper-schedule")
        if self.config.simulator:
            self.simulator = MarketSimulator(lambda: self.moto.client("events"), rate=self.config.simulator_rate)
            self.simulator.start()

    def _shorten_visibility(self, seconds: int) -> None:
        sqs = self.moto.client("sqs")
        for urls in self.queues.values():
            sqs.set_queue_attributes(QueueUrl=urls.url, Attributes={"VisibilityTimeout": str(seconds)})

    async def stop(self) -> None:
        """Simulator, then every connection (each gets its $disconnect), pumps, functions, moto; then the env."""
        if not self._started:
            return
        self._started = False
        if self.simulator is not None:
            await self.simulator.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self.gateway is not None:
            await self.gateway.stop()
        for pump in self.pumps:
            await pump.stop()
        for function in self.functions.values():
            function.shutdown(wait=False)
        await asyncio.get_running_loop().run_in_executor(None, self.moto.stop)
        self._forget_runtime()
        self._restore_environment()

    async def __aenter__(self) -> LocalStack:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @contextlib.contextmanager
    def gateway_limits(self, **changes: Any) -> Iterator[GatewayConfig]:
        """Change GatewayConfig fields (idle_timeout, max_connection_seconds, ...) for connections made meanwhile.

        The gateway reads its config when it arms a connection's timers, so a
        test can shorten the idle timeout without a second stack.
        """
        gateway = self._gateway()
        before = gateway.config
        gateway.config = dataclasses.replace(before, **changes)
        try:
            yield gateway.config
        finally:
            gateway.config = before

    # ------------------------------------------------------------------ environment

    def _apply_environment(self, management_endpoint: str) -> None:
        assert self.settings is not None
        self.settings = self.settings.model_copy(update={"management_endpoint": management_endpoint})
        env = self.settings.to_env()
        for queue in topology.QUEUES:
            urls = self.queues[queue.logical_id]
            env[queue.env_var] = urls.url
            env[queue.dlq_env_var] = urls.dlq_url
        env.update(
            {
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": self.config.region,
                "AWS_REGION": self.config.region,
                "POWERTOOLS_SERVICE_NAME": "websocket",
                "POWERTOOLS_TRACE_DISABLED": "true",
                # EMF would print one JSON document per invocation on stdout; CloudWatch is not here to read it.
                "POWERTOOLS_METRICS_DISABLED": "true",
                "POWERTOOLS_LOG_LEVEL": os.environ.get("POWERTOOLS_LOG_LEVEL", self.config.log_level),
            }
        )
        env.pop("AWS_SESSION_TOKEN", None)
        for key, value in env.items():
            if key not in self._saved_environ:
                self._saved_environ[key] = os.environ.get(key)
            os.environ[key] = value
        if "AWS_SESSION_TOKEN" in os.environ:
            # A real session token next to the fake keys would make every signature invalid.
            self._saved_environ.setdefault("AWS_SESSION_TOKEN", os.environ["AWS_SESSION_TOKEN"])
            del os.environ["AWS_SESSION_TOKEN"]
        self._forget_runtime()

    def _restore_environment(self) -> None:
        for key, value in self._saved_environ.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_environ.clear()

    @staticmethod
    def _forget_runtime() -> None:
        """Drop the handlers' cached runtime (and close its Management API connections) so the next
        invocation builds one from the current environment."""
        from quanttrade_ws.runtime import runtime

        if runtime.cache_info().currsize:
            built = runtime()
            gateway = vars(built).get("gateway")
            if gateway is not None and hasattr(gateway, "shutdown"):
                # Its shutdown drives its own private loop, which cannot run on a thread that is running ours.
                closer = threading.Thread(target=gateway.shutdown, name="close-management-api", daemon=True)
                closer.start()
                closer.join(timeout=5)
        runtime.cache_clear()

    # ------------------------------------------------------------------ readiness

    async def _moto_answers(self) -> bool:
        def probe() -> bool:
            with urllib.request.urlopen(f"{self.moto.endpoint_url}/moto-api/data.json", timeout=1.5) as response:
                return response.status == 200

        return await asyncio.get_running_loop().run_in_executor(None, probe)

    async def _tables_exist(self) -> bool:
        assert self.settings is not None
        wanted = {table_name(self.settings, table) for table in topology.TABLES}

        def probe() -> bool:
            names = set(self.moto.client("dynamodb").list_tables().get("TableNames", []))
            return wanted <= names

        return await asyncio.get_running_loop().run_in_executor(None, probe)

    async def _queues_exist(self) -> bool:
        urls = [u for q in self.queues.values() for u in (q.url, q.dlq_url)]

        def probe() -> bool:
            sqs = self.moto.client("sqs")
            for url in urls:
                sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
            return bool(urls)

        return await asyncio.get_running_loop().run_in_executor(None, probe)

    # ------------------------------------------------------------------ scheduled sweeper

    async def _sweep_every(self, interval: float) -> None:
        function = self.functions[topology.SWEEPER.name]
        while True:
            await asyncio.sleep(interval)
            event = {
                "version": "0",
                "id": os.urandom(16).hex(),
                "detail-type": "Scheduled Event",
                "source": "aws.events",
                "account": DEFAULT_ACCOUNT,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "region": self.config.region,
                "resources": [f"arn:aws:events:{self.config.region}:{DEFAULT_ACCOUNT}:rule/SweeperSchedule"],
                "detail": {},
            }
            try:
                await function.invoke(event)
            except Exception as error:
                logger.warning("scheduled sweep failed: %s: %s", type(error).__name__, error)

    # ------------------------------------------------------------------ HTTP: admin API, dashboard

    def _extra_routes(self) -> list[web.AbstractRouteDef]:
        routes: list[web.AbstractRouteDef] = []
        for route_key in topology.ADMIN_ROUTES:
            method, path = route_key.split(" ", 1)
            routes.append(web.route(method, ADMIN_PREFIX + path, self._admin_handler(route_key)))
        routes.append(web.get("/local/stats", self._local_stats))
        if self.config.dashboard:
            routes.append(web.get(r"/{name:[A-Za-z0-9_-]+\.(?:js|css|html|svg|ico)}", self._serve_static))
        return routes

    def _admin_handler(self, route_key: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            event = self.http_api_event(request, route_key)
            try:
                result = await self.functions[topology.ADMIN.name].invoke(event)
            except Exception as error:
                logger.error("admin route %s failed: %s: %s", route_key, type(error).__name__, error)
                return web.json_response({"message": "Internal Server Error"}, status=500)
            headers = dict(result.get("headers") or {})
            headers.pop("content-length", None)
            return web.Response(status=int(result.get("statusCode", 200)), text=result.get("body", ""), headers=headers)

        return handle

    def http_api_event(self, request: web.Request, route_key: str) -> dict[str, Any]:
        """The HTTP API (payload format 2.0) event an IAM-authorised route gets on AWS."""
        now = time.time()
        path = request.path.removeprefix(ADMIN_PREFIX) or "/"
        headers = {key.lower(): value for key, value in request.headers.items()}
        request_id = os.urandom(8).hex()
        return {
            "version": "2.0",
            "routeKey": route_key,
            "rawPath": path,
            "rawQueryString": request.query_string,
            "headers": headers,
            **({"queryStringParameters": dict(request.query)} if request.query else {}),
            "requestContext": {
                "accountId": DEFAULT_ACCOUNT,
                "apiId": "qtlocaladmin",
                "authorizer": {
                    "iam": {
                        "accessKey": "testing",
                        "accountId": DEFAULT_ACCOUNT,
                        "callerId": "local-developer",
                        "principalOrgId": None,
                        "userArn": f"arn:aws:iam::{DEFAULT_ACCOUNT}:user/local-developer",
                        "userId": "local-developer",
                    }
                },
                "domainName": request.host,
                "domainPrefix": request.host.split(".", 1)[0],
                "http": {
                    "method": request.method,
                    "path": path,
                    "protocol": f"HTTP/{request.version.major}.{request.version.minor}",
                    "sourceIp": request.remote or "127.0.0.1",
                    "userAgent": request.headers.get("User-Agent", ""),
                },
                "requestId": request_id,
                "routeKey": route_key,
                "stage": "$default",
                "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
                "timeEpoch": int(now * 1000),
            },
            "pathParameters": dict(request.match_info),
            "isBase64Encoded": False,
        }

    async def _local_stats(self, request: web.Request) -> web.Response:
        """What CloudWatch would show on AWS: invocations, errors and the pumps' counters."""
        return web.json_response(
            {
                "functions": {
                    name: {"invocations": f.invocations, "errors": f.errors, "timeouts": f.timeouts}
                    for name, f in self.functions.items()
                },
                "pumps": {pump.function.name: pump.stats.as_dict() for pump in self.pumps},
                "simulator": dict(self.simulator.published) if self.simulator else None,
                "connections": len(self._gateway().connection_ids),
            }
        )

    async def _serve_dashboard(self, request: web.Request) -> web.StreamResponse:
        return await self._file_response(DASHBOARD_DIR / "index.html")

    async def _serve_static(self, request: web.Request) -> web.StreamResponse:
        return await self._file_response(DASHBOARD_DIR / request.match_info["name"])

    @staticmethod
    async def _file_response(path: Path) -> web.StreamResponse:
        if not path.is_file() or path.parent != DASHBOARD_DIR:
            raise web.HTTPNotFound()
        # The dashboard has no build step and changes while `make dev` runs: never let the browser cache it.
        return web.FileResponse(path, headers={"Cache-Control": "no-store"})


class BackgroundStack:
    """A LocalStack running on its own event loop in a thread, for synchronous callers and test fixtures.

    Tests drive clients on their own loops; the stack keeps serving while a
    test blocks, and nothing of the stack's loop leaks into theirs.
    """

    def __init__(self, config: StackConfig | None = None) -> None:
        self.stack = LocalStack(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="local-stack", daemon=True)

    def start(self, timeout: float = 60.0) -> LocalStack:
        self._thread.start()
        self.run(self.stack.start(), timeout)
        return self.stack

    def run(self, coroutine: Awaitable[Any], timeout: float | None = None) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)  # type: ignore[arg-type]
        return future.result(timeout)

    def call(self, function: Callable[[], Any]) -> Any:
        """Run a plain callable on the stack's loop (e.g. to read gateway state safely)."""

        async def call() -> Any:
            return function()

        return self.run(call(), timeout=10)

    def stop(self, timeout: float = 60.0) -> None:
        if not self._thread.is_alive():
            return
        try:
            self.run(self.stack.stop(), timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            if not self._loop.is_running():
                self._loop.close()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def ready(http_url: str, timeout: float = 2.0) -> dict[str, Any]:
    """GET /ready of a running stack (the answer is JSON whether ready or not)."""
    try:
        with urllib.request.urlopen(f"{http_url}/ready", timeout=timeout) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as error:
        return dict(json.loads(error.read()))


def configure_logging(level: str = "INFO") -> None:
    """Readable logs for the local stack's own components; the handlers log through Powertools."""
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # "Found credentials in environment variables" once per boto3 client says nothing useful here.
    logging.getLogger("botocore").setLevel(max(logging.WARNING, logging.getLevelName(level)))

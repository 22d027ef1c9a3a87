"""The whole backend on one machine, built from the cloud assembly that `cdk synth` produces.

What runs locally is what deploys. `LocalStack.start()`:

1. synthesizes the CDK app (`local.cloud.synthesize`, cached by a hash of its
   inputs, so a warm start does not pay for it) and reads the template;
2. starts moto in server mode and creates every table, queue, bus, rule and
   secret the template declares (`local.cloud.provision`);
3. starts the API Gateway emulator (`local.api_gateway`) with the template's
   WebSocket routes, its `$connect` authorizer and identity source, and the
   template's stage, plus the admin HTTP API's routes;
4. runs every Lambda function of the template (`local.lambda_runtime`) in
   worker processes: its handler string, only its code asset and its layers
   on the import path (the third-party layer installed for this machine from
   the distributions the assembly's layer holds), exactly its template
   environment with Ref/GetAtt/Join/Sub resolved to the local resources and
   the Management API endpoint pointing at the local gateway, its timeout,
   memory size and a concurrency cap. Each function's calls to AWS go
   through `local.aws_endpoint`, which checks them against the function's
   role policies from the template;
5. cold-starts every function and runs the deploy smoke (`local.smoke`):
   every function is invoked with the samples in `events/` that belong to it.
   A template that would fail on AWS fails here, naming the function and the
   cause;
6. starts the event source mappings (`local.pump`), the scheduled rule's
   sweeper and, if asked, the market simulator.

Nothing here names a table, queue, rule, route or function: the template is
the one source.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiohttp import web

from local.api_gateway.config import GatewayConfig
from local.api_gateway.server import LocalGateway
from local.aws_endpoint import AwsFrontDoor
from local.cloud import Clients, CloudAssembly, Deployment, Template, provision, synthesize
from local.deps_layer import local_layer, runtime_provided
from local.lambda_runtime import DEFAULT_ACCOUNT, Credentials, LambdaFunction, preflight
from local.moto_server import CREDENTIALS, DEFAULT_TTL_SWEEP_SECONDS, Mode, MotoServer
from local.principals import Principal, Principals
from local.pump import QueuePump
from local.signed_http import PRINCIPAL_KEY, require_invoke
from local.simulator import MarketSimulator
from local.tokens import mint_token
from quanttrade_ws.auth import ALL_PERMISSIONS
from quanttrade_ws.config import Settings

logger = logging.getLogger("quanttrade.local.stack")

DASHBOARD_DIR = Path(__file__).parent / "dashboard"
ADMIN_PREFIX = "/admin"
OUTPUTS_FILE = Path(__file__).resolve().parent.parent / ".build" / "local" / "outputs.json"
LOCAL_API_ID = "qtlocalapi"
ADMIN_API_ID = "qtlocaladmin"  # the admin HTTP API's id in execute-api ARNs (its stage is $default)
# The sweeper's schedule comes from the template's rule unless a number (seconds) or None (never) is given.
SCHEDULED: Literal["template"] = "template"
# Lambda's default concurrency is the account's (1,000); two cores cannot hold that many interpreters.
# Functions without reserved concurrency get this many execution environments locally.
DEFAULT_LOCAL_CONCURRENCY = 8
# Where StackConfig.faults can inject: the functions' AWS services, and the Management API.
MANAGEMENT_FAULTS = "management"
FAULT_TARGETS = ("dynamodb", "sqs", MANAGEMENT_FAULTS)
_RATE = re.compile(r"^rate\((\d+) (minute|minutes|hour|hours|day|days|second|seconds)\)$")
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


class StackStartError(RuntimeError):
    """The template would not work on AWS (or could not be run here): what failed, and in which function."""


class LocalStack:
    """Start with `await stack.start()` (or `async with`), stop with `await stack.stop()`."""

    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig()
        self.moto = MotoServer(
            self.config.host,
            self.config.moto_port,
            mode=self.config.moto_mode,
            region=self.config.region,
            ttl_sweep_seconds=self.config.ttl_sweep_seconds,
        )
        self.assembly: CloudAssembly | None = None
        self.deployment: Deployment | None = None
        self.settings: Settings | None = None  # the message function's settings, for tests and tools
        self.secret: str = ""
        self.gateway: LocalGateway | None = None
        self.pumps: list[QueuePump] = []
        self.simulator: MarketSimulator | None = None
        self.functions: dict[str, LambdaFunction] = {}  # template logical id -> function
        # Who may call AWS, the Management API and the admin routes: each function's role, and the local
        # administrator (the stack's own tooling, the CLI, tests).
        self.principals = Principals(DEFAULT_ACCOUNT)
        self.front_door: AwsFrontDoor | None = None
        self.startup_seconds: float | None = None
        self.stop_seconds: float | None = None
        self._probe_threads: ThreadPoolExecutor | None = None
        self._probe_clients: dict[str, Any] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._started = False
        self._wrote_outputs = False
        self._serving = False  # every function started and answered the smoke; pumps and schedule run

    # ------------------------------------------------------------------ addresses

    @property
    def template(self) -> Template:
        if self.assembly is None:
            raise RuntimeError("the local stack is not started")
        return self.assembly.template

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

    @property
    def aws_function_endpoint(self) -> str:
        """The AWS endpoint the functions call (their AWS_ENDPOINT_URL): the IAM-checking front door."""
        if self.front_door is None:
            raise RuntimeError("the local stack is not started")
        return self.front_door.endpoint_url

    @property
    def event_bus_name(self) -> str:
        return self._outputs()["EventBusName"]

    def _gateway(self) -> LocalGateway:
        if self.gateway is None:
            raise RuntimeError("the local stack is not started")
        return self.gateway

    def _deployment(self) -> Deployment:
        if self.deployment is None:
            raise RuntimeError("the local stack is not started")
        return self.deployment

    def _outputs(self) -> dict[str, str]:
        return self._deployment().outputs()

    def token(self, user_id: str = "dev-user", **claims: Any) -> str:
        """An access token this stack accepts (every permission, premium level, 24 hours, unless told)."""
        claims.setdefault("permissions", ALL_PERMISSIONS)
        return mint_token(self.secret, user_id, **claims)

    def client(self, service: str) -> Any:
        """A boto3 client for this stack's AWS (dynamodb, sqs, events, secretsmanager) or Management API."""
        if service == "apigatewaymanagementapi":
            import boto3

            make_client: Any = boto3.client
            return make_client(
                service, region_name=self.config.region, endpoint_url=self.management_endpoint, **CREDENTIALS
            )
        return self.moto.client(service)

    def function(self, handler: str) -> LambdaFunction:
        """The template's function whose handler is `handler` (e.g. "fanout.handler")."""
        for logical_id, declared in self.template.functions.items():
            if declared.handler == handler:
                return self.functions[logical_id]
        raise KeyError(f"no function with handler {handler!r} in the template")

    def queue_urls(self) -> dict[str, str]:
        """Every queue of the template: logical id -> URL."""
        deployment = self._deployment()
        return {logical_id: deployment.ref(logical_id) for logical_id in self.template.queues}

    def dead_letter_queue_urls(self) -> list[str]:
        """The queues that some other queue or rule target dead-letters into."""
        template = self.template
        dlqs = {q.dead_letter_queue for q in template.queues.values() if q.dead_letter_queue}
        for rule in template.rules.values():
            dlqs |= {t.dead_letter_logical_id for t in rule.targets if t.dead_letter_logical_id}
        return [self._deployment().ref(logical_id) for logical_id in sorted(dlqs)]

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> LocalStack:
        if self._started:
            return self
        self._started = True
        began = time.monotonic()
        # The functions log at the template's level; this console shows their lines from this level up.
        logging.getLogger("quanttrade.local.lambda.log").setLevel(self.config.log_level)
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        self._serving = True
        self._write_outputs()
        return self

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        assembly = self.config.assembly
        if assembly is None:
            assembly = await loop.run_in_executor(None, lambda: synthesize(self.config.synth_context()))
        self.assembly = assembly
        template = assembly.template
        websocket_api = template.websocket_api
        await loop.run_in_executor(None, self.moto.start)
        self.front_door = AwsFrontDoor(
            self.moto.endpoint_url,
            self.principals,
            region=self.config.region,
            host=self.config.host,
            faults=self.config.aws_fault_rates(),
            fault_seed=self.config.fault_seed,
        )
        await loop.run_in_executor(None, self.front_door.start)

        secret_values = {}
        if self.config.secret():
            secret_values = {self._signing_key_secret(template): str(self.config.secret())}
        self.deployment = deployment = await loop.run_in_executor(
            None,
            lambda: provision(
                template, Clients.from_factory(self.moto.client), secret_values=secret_values, api_ids={}
            ),
        )
        self.secret = await loop.run_in_executor(None, self._read_signing_key)
        if self.config.queue_visibility_timeout is not None:
            await loop.run_in_executor(None, self._shorten_visibility, self.config.queue_visibility_timeout)

        authorizer = next(
            (websocket_api.authorizer_of(key) for key in websocket_api.routes if websocket_api.authorizer_of(key)),
            None,
        )
        gateway_config = GatewayConfig(
            host=self.config.host,
            port=self.config.gateway_port,
            stage=websocket_api.stage_name,
            region=self.config.region,
            account=DEFAULT_ACCOUNT,
            api_id=LOCAL_API_ID,
            idle_timeout=self.config.idle_timeout,
            max_connection_seconds=self.config.max_connection_seconds,
            management_rate_per_second=self.config.management_rate_per_second,
            connect_rate_per_second=self.config.connect_rate_per_second,
            identity_sources=authorizer.identity_source if authorizer else (),
            route_selection_expression=websocket_api.route_selection_expression or "$request.body.action",
            management_fault_rate=self.config.faults.get(MANAGEMENT_FAULTS, 0.0),
            management_fault_seed=self.config.fault_seed,
        )
        runtime_dir = await loop.run_in_executor(None, runtime_provided)
        layers = await loop.run_in_executor(None, self._local_layers)
        self.functions = {
            logical_id: self._function(logical_id, layers, runtime_dir) for logical_id in template.functions
        }
        routes = {key: self.functions[route.function_logical_id] for key, route in websocket_api.routes.items()}
        self.gateway = LocalGateway(
            gateway_config,
            routes,
            self.functions[authorizer.function_logical_id] if authorizer else None,
            readiness_checks={
                "started": self._started_serving,
                "functions_endpoint": self._front_door_answers,
                "tables": self._tables_exist,
                "queues": self._queues_exist,
            },
            root_handler=self._serve_dashboard if self.config.dashboard else None,
            extra_routes=self._extra_routes(),
            principals=self.principals,
        )
        await self.gateway.start()
        # The API's endpoint in every environment (https://{api}.execute-api.{region}.amazonaws.com/{stage})
        # now points at the gateway; its Ref is the gateway's api id, as in the events the gateway sends.
        deployment.bind_api(websocket_api.logical_id, local_base_url=self.gateway.http_url, api_id=LOCAL_API_ID)
        for logical_id, function in self.functions.items():
            function.configure(
                environment=deployment.function_environment(logical_id),
                credentials=self._credentials_of(self._register_role(logical_id)),
                endpoint_url=self.front_door.endpoint_url,
            )
        self.settings = self._settings_of(routes.get("$default") or next(iter(routes.values())))

        # Every function cold-starts once now, so a handler that cannot be imported fails the start.
        try:
            await preflight(self.functions.values())
        except Exception as error:
            raise StackStartError(f"a function cannot start: {error}") from error
        if self.config.smoke:
            from local.smoke import run_smoke

            report = await run_smoke(self)
            if report.failures:
                raise StackStartError("the deploy smoke failed:\n  " + "\n  ".join(report.failures))

        self.pumps = self._pumps()
        for pump in self.pumps:
            pump.start()
        interval = self._sweep_interval()
        if interval:
            self._sweeper = loop.create_task(self._sweep_every(interval), name="sweeper-schedule")
        if self.config.simulator:
            self.simulator = MarketSimulator(
                lambda: self.moto.client("events"), rate=self.config.simulator_rate, event_bus_name=self.event_bus_name
            )
            self.simulator.start()

    # ------------------------------------------------------------------ the template's parts

    def _local_layers(self) -> dict[Path, Path]:
        """Each layer directory of the assembly -> what stands in for it on this machine (see local.deps_layer)."""
        layer_dirs = {d for f in self.template.functions.values() for d in f.layer_dirs}
        return {layer_dir: local_layer(layer_dir) for layer_dir in sorted(layer_dirs)}

    def _function(self, logical_id: str, layers: dict[Path, Path], runtime_dir: Path) -> LambdaFunction:
        declared = self.template.functions[logical_id]
        return LambdaFunction(
            self._deployment().ref(logical_id),
            declared.handler,
            code_dirs=[declared.code_dir],
            layer_dirs=[layers[layer_dir] for layer_dir in declared.layer_dirs],
            runtime_dir=runtime_dir,
            timeout_seconds=declared.timeout,
            memory_mb=declared.memory_size,
            concurrency=declared.reserved_concurrency or DEFAULT_LOCAL_CONCURRENCY,
            region=self.config.region,
            account=DEFAULT_ACCOUNT,
        )

    def _register_role(self, logical_id: str) -> Principal:
        """The function's role as the front door and the gateway check it: the template's policies, resolved."""
        deployment = self._deployment()
        declared = self.template.functions[logical_id]
        return self.principals.register_function(
            deployment.ref(logical_id), deployment.ref(declared.role_logical_id), deployment.role_policies(logical_id)
        )

    @staticmethod
    def _credentials_of(principal: Principal) -> Credentials:
        keys = principal.credentials
        return Credentials(keys.access_key_id, keys.secret_key, keys.session_token)

    def _settings_of(self, function: LambdaFunction) -> Settings:
        environment = dict(function.environment)
        environment.pop("QT_JWT_SECRET_ARN", None)
        return Settings.from_env({**environment, "QT_JWT_SECRET": self.secret})

    @staticmethod
    def _signing_key_secret(template: Template) -> str:
        """The secret the functions verify access tokens with: the one `QT_JWT_SECRET_ARN` names."""
        named = {
            value["Ref"]
            for function in template.functions.values()
            if isinstance(value := function.environment.get("QT_JWT_SECRET_ARN"), dict) and "Ref" in value
        }
        secrets = named & set(template.secrets)
        if not named:
            # RS256 (context jwks_url or cognito), or an operator's secret (jwt_secret_arn): keys moto cannot hold.
            raise StackStartError(
                "the template's functions verify access tokens without a key it generates (context jwks_url, "
                "cognito or jwt_secret_arn); the local stack mints development tokens with that key, so run it "
                "without those context keys"
            )
        if len(secrets) != 1:
            raise StackStartError(f"QT_JWT_SECRET_ARN names secrets {sorted(named)}; expected one of the template's")
        return secrets.pop()

    def _read_signing_key(self) -> str:
        """The key the stack's secret holds, read through Secrets Manager as the functions read it."""
        arn = self._deployment().ref(self._signing_key_secret(self.template))
        return str(self.moto.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"])

    def _pumps(self) -> list[QueuePump]:
        deployment = self._deployment()
        pumps = []
        for mapping in self.template.event_source_mappings.values():
            if not mapping.enabled:
                continue
            if not mapping.reports_batch_item_failures:
                raise StackStartError(
                    f"{mapping.logical_id}: the event source mapping of {mapping.function_logical_id} does not "
                    "report batch item failures, so one failed record would redeliver the whole batch"
                )
            queue = self.template.queues[mapping.queue_logical_id]
            visibility = self.config.queue_visibility_timeout or queue.visibility_timeout or 30
            pumps.append(
                QueuePump(
                    self.functions[mapping.function_logical_id],
                    lambda: self.moto.client("sqs"),
                    deployment.ref(mapping.queue_logical_id),
                    deployment.get_att(mapping.queue_logical_id, "Arn"),
                    batch_size=mapping.batch_size or 10,
                    visibility_timeout=visibility,
                    fifo=queue.fifo,
                    region=self.config.region,
                )
            )
        return pumps

    def _sweep_interval(self) -> float | None:
        if self.config.sweep_interval != SCHEDULED:
            return self.config.sweep_interval  # type: ignore[return-value]
        for expression, _ in self.template.scheduled_functions():
            match = _RATE.match(expression)
            if match is None:
                raise StackStartError(f"schedule {expression!r}: only rate(...) expressions run locally")
            return int(match.group(1)) * _UNIT_SECONDS[match.group(2).rstrip("s")]
        return None

    def _shorten_visibility(self, seconds: int) -> None:
        sqs = self.moto.client("sqs")
        for url in self.queue_urls().values():
            sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": str(seconds)})

    def _write_outputs(self) -> None:
        """What `cdk deploy --outputs-file` writes, for `python -m local ...` to find this running stack."""
        if self.config.gateway_port != 8081:
            return  # a test's stack on free ports: the default one is the one the tools look for
        outputs = {
            **self._outputs(),
            "LocalAwsEndpoint": self.aws_endpoint_url,
            "LocalSigningKeySecretArn": self._deployment().ref(self._signing_key_secret(self.template)),
        }
        OUTPUTS_FILE.parent.mkdir(parents=True, exist_ok=True)
        OUTPUTS_FILE.write_text(json.dumps({self.template.stack_name: outputs}, indent=2) + "\n", encoding="utf-8")
        self._wrote_outputs = True

    async def stop(self) -> None:
        """Simulator, then every connection (each gets its $disconnect), pumps, functions, moto.

        Every step is bounded, so Ctrl-C ends the stack within seconds under any
        load: a pump does not wait out its long poll, and the gateway gives the
        `$disconnect`s one budget for all (see `LocalGateway.stop`).
        """
        if not self._started:
            return
        self._started = False
        self._serving = False
        loop = asyncio.get_running_loop()
        timings: dict[str, float] = {}
        began = step = time.monotonic()

        def lap(name: str) -> None:
            nonlocal step
            now = time.monotonic()
            timings[name] = now - step
            step = now

        if self.simulator is not None:
            await self.simulator.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        lap("simulator")
        if self.gateway is not None:
            await self.gateway.stop()
        lap("connections")
        await asyncio.gather(*(pump.stop() for pump in self.pumps))
        await asyncio.gather(*(function.aclose() for function in self.functions.values()))
        lap("pumps and functions")
        if self.front_door is not None:
            await loop.run_in_executor(None, self.front_door.stop)
            self.front_door = None
        await loop.run_in_executor(None, self.moto.stop)
        lap("moto")
        if self._probe_threads is not None:
            self._probe_threads.shutdown(wait=False, cancel_futures=True)
            self._probe_threads = None
        self._probe_clients.clear()
        if self._wrote_outputs:
            OUTPUTS_FILE.unlink(missing_ok=True)  # its keys and endpoints die with this stack
            self._wrote_outputs = False
        self.stop_seconds = time.monotonic() - began
        logger.info(
            "stopped in %.1f s (%s)",
            self.stop_seconds,
            ", ".join(f"{name} {secs:.1f} s" for name, secs in timings.items()),
        )

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

    # ------------------------------------------------------------------ readiness

    async def _started_serving(self) -> bool:
        """The gateway answers before start-up is over (the smoke needs it): not ready until it is."""
        return self._serving

    async def _front_door_answers(self) -> bool:
        """The functions' AWS endpoint answers (an unsigned request is refused by the door itself, never
        reaching moto: a cheap probe; whether moto answers is what the table and queue checks ask)."""
        door = self.front_door
        if door is None:
            return False

        def probe() -> bool:
            try:
                with urllib.request.urlopen(f"{door.endpoint_url}/", timeout=1.5) as response:
                    return response.status < 500
            except urllib.error.HTTPError as error:
                return error.code < 500

        return await self._probe(probe)

    async def _tables_exist(self) -> bool:
        deployment = self._deployment()
        wanted = {deployment.ref(logical_id) for logical_id in self.template.tables}

        def probe() -> bool:
            names = set(self._probe_client("dynamodb").list_tables().get("TableNames", []))
            return wanted <= names

        return await self._probe(probe)

    async def _queues_exist(self) -> bool:
        urls = list(self.queue_urls().values())

        def probe() -> bool:
            sqs = self._probe_client("sqs")
            for url in urls:
                sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
            return bool(urls)

        return await self._probe(probe)

    async def _probe(self, probe: Callable[[], bool]) -> bool:
        # Probes have threads of their own: on the loop's shared pool they would queue behind the
        # simulator's and tools' blocking calls, and a probe that waits for a thread is not a slow moto.
        if self._probe_threads is None:
            self._probe_threads = ThreadPoolExecutor(max_workers=3, thread_name_prefix="ready-probe")
        return await asyncio.get_running_loop().run_in_executor(self._probe_threads, probe)

    def _probe_client(self, service: str) -> Any:
        # One client per service for every probe: building a boto3 client costs more CPU than moto's answer.
        client = self._probe_clients.get(service)
        if client is None:
            client = self._probe_clients[service] = self.moto.client(service, read_timeout=5, connect_timeout=2)
        return client

    # ------------------------------------------------------------------ scheduled sweeper

    def scheduled_event(self, rule_logical_id: str) -> dict[str, Any]:
        """The event EventBridge Scheduler hands a rule's target."""
        return {
            "version": "0",
            "id": os.urandom(16).hex(),
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": DEFAULT_ACCOUNT,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "region": self.config.region,
            "resources": [f"arn:aws:events:{self.config.region}:{DEFAULT_ACCOUNT}:rule/{rule_logical_id}"],
            "detail": {},
        }

    async def _sweep_every(self, interval: float) -> None:
        schedules = [
            (rule, target.target_logical_id)
            for rule in self.template.schedules.values()
            for target in rule.targets
            if target.target_logical_id in self.functions
        ]
        while True:
            await asyncio.sleep(interval)
            for rule, function_logical_id in schedules:
                try:
                    await self.functions[function_logical_id].invoke(self.scheduled_event(rule.logical_id))
                except Exception as error:
                    logger.warning("scheduled %s failed: %s: %s", rule.logical_id, type(error).__name__, error)

    # ------------------------------------------------------------------ HTTP: admin API, dashboard

    def _extra_routes(self) -> list[web.AbstractRouteDef]:
        # IAM-authorised as the deployed admin API is: SigV4 by a principal allowed execute-api:Invoke.
        guard = require_invoke(
            self.principals,
            region=self.config.region,
            account=DEFAULT_ACCOUNT,
            api_id=ADMIN_API_ID,
            strip_prefix=ADMIN_PREFIX,
        )
        routes: list[web.AbstractRouteDef] = []
        admin = self.template.http_api
        for route_key, route in admin.routes.items():
            method, path = route_key.split(" ", 1)
            routes.append(
                web.route(method, ADMIN_PREFIX + path, guard(self._admin_handler(route_key, route.function_logical_id)))
            )
        routes.append(web.get("/local/stats", guard(self._local_stats)))
        if self.config.dashboard:
            routes.append(web.get(r"/{name:[A-Za-z0-9_-]+\.(?:js|css|html|svg|ico)}", self._serve_static))
        return routes

    def _admin_handler(
        self, route_key: str, function_logical_id: str
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            event = self.http_api_event(request, route_key)
            try:
                result = await self.functions[function_logical_id].invoke(event)
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
        caller = request.get(PRINCIPAL_KEY) or self.principals.admin
        return {
            "version": "2.0",
            "routeKey": route_key,
            "rawPath": path,
            "rawQueryString": request.query_string,
            "headers": headers,
            **({"queryStringParameters": dict(request.query)} if request.query else {}),
            "requestContext": {
                "accountId": DEFAULT_ACCOUNT,
                "apiId": ADMIN_API_ID,
                "authorizer": {
                    "iam": {
                        "accessKey": caller.credentials.access_key_id,
                        "accountId": DEFAULT_ACCOUNT,
                        "callerId": caller.name,
                        "principalOrgId": None,
                        "userArn": caller.arn,
                        "userId": caller.name,
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
                "aws_calls": self.front_door.call_counts() if self.front_door is not None else {},
                "faults_injected": {
                    **(self.front_door.fault_counts() if self.front_door is not None else {}),
                    MANAGEMENT_FAULTS: self._gateway().management_fault_counts(),
                },
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

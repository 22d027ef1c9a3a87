"""`LocalStack`: the template's backend started on this machine, its addresses, and its orderly stop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

from local.api_gateway.config import GatewayConfig
from local.api_gateway.server import LocalGateway
from local.aws_front_door.server import AwsFrontDoor
from local.cloud.assembly import CloudAssembly
from local.cloud.deployment import Deployment
from local.cloud.provisioning import Clients, provision
from local.cloud.synth import synthesize
from local.cloud.template import Template
from local.deps_layer import runtime_provided
from local.lambda_runtime.environment import DEFAULT_ACCOUNT
from local.lambda_runtime.function import LambdaFunction
from local.lambda_runtime.preflight import preflight
from local.moto_server import CREDENTIALS, MotoServer
from local.pipes import PipePump, pipe_pumps
from local.principals import Principals
from local.pump import QueuePump
from local.simulator import MarketSimulator
from local.stack.config import (
    LOCAL_API_ID,
    OUTPUTS_FILE,
    StackConfig,
    StackStartError,
)
from local.stack.event_sources import queue_pumps, sweep_every, sweep_interval
from local.stack.functions import credentials_of, local_function, local_layers, register_role
from local.stack.http_routes import serve_dashboard, stack_routes
from local.stack.readiness import ReadinessProbes
from local.stack.signing_key import read_signing_key, signing_key_secret
from local.tokens import mint_token
from quanttrade_ws.auth import ALL_PERMISSIONS
from quanttrade_ws.config import Settings

logger = logging.getLogger("quanttrade.local.stack")


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
        self.pipes: list[PipePump] = []  # the template's EventBridge Pipes (local.pipes)
        self.simulator: MarketSimulator | None = None
        self.functions: dict[str, LambdaFunction] = {}  # template logical id -> function
        # Who may call AWS, the Management API and the admin routes: each function's role, and the local
        # administrator (the stack's own tooling, the CLI, tests).
        self.principals = Principals(DEFAULT_ACCOUNT)
        self.front_door: AwsFrontDoor | None = None
        self.startup_seconds: float | None = None
        self.stop_seconds: float | None = None
        self._readiness = ReadinessProbes(self.moto)
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
        return self.running_gateway().url

    @property
    def http_url(self) -> str:
        return self.running_gateway().http_url

    @property
    def management_endpoint(self) -> str:
        return self.running_gateway().management_endpoint

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

    def running_gateway(self) -> LocalGateway:
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
        self.front_door = front_door = AwsFrontDoor(
            self.moto.endpoint_url,
            self.principals,
            region=self.config.region,
            host=self.config.host,
            faults=self.config.aws_fault_rates(),
            fault_seed=self.config.fault_seed,
        )
        await loop.run_in_executor(None, front_door.start)

        secret_values = {}
        if self.config.secret():
            secret_values = {signing_key_secret(template): str(self.config.secret())}
        self.deployment = deployment = await loop.run_in_executor(
            None,
            lambda: provision(
                template, Clients.from_factory(self.moto.client), secret_values=secret_values, api_ids={}
            ),
        )
        self.secret = await loop.run_in_executor(None, read_signing_key, self.moto, template, deployment)
        if self.config.queue_visibility_timeout is not None:
            await loop.run_in_executor(None, self._shorten_visibility, self.config.queue_visibility_timeout)

        runtime_dir = await loop.run_in_executor(None, runtime_provided)
        layers = await loop.run_in_executor(None, local_layers, template)
        self.functions = {
            logical_id: local_function(
                template,
                deployment,
                logical_id,
                layers,
                runtime_dir,
                self.config.region,
                self.config.environment_idle_seconds,
            )
            for logical_id in template.functions
        }
        routes = {key: self.functions[route.function_logical_id] for key, route in websocket_api.routes.items()}
        authorizer = next(
            (websocket_api.authorizer_of(key) for key in websocket_api.routes if websocket_api.authorizer_of(key)),
            None,
        )
        tables = {deployment.ref(logical_id) for logical_id in template.tables}
        queues = list(self.queue_urls().values())
        self.gateway = LocalGateway(
            self.config.gateway_config(websocket_api, authorizer.identity_source if authorizer else ()),
            routes,
            self.functions[authorizer.function_logical_id] if authorizer else None,
            readiness_checks={
                "started": self._started_serving,
                "functions_endpoint": lambda: self._readiness.front_door_answers(front_door.endpoint_url),
                "tables": lambda: self._readiness.tables_exist(tables),
                "queues": lambda: self._readiness.queues_exist(queues),
            },
            root_handler=serve_dashboard if self.config.dashboard else None,
            extra_routes=stack_routes(self),
            principals=self.principals,
        )
        await self.gateway.start()
        # The API's endpoint in every environment (https://{api}.execute-api.{region}.amazonaws.com/{stage})
        # now points at the gateway; its Ref is the gateway's api id, as in the events the gateway sends.
        deployment.bind_api(websocket_api.logical_id, local_base_url=self.gateway.http_url, api_id=LOCAL_API_ID)
        for logical_id, function in self.functions.items():
            function.configure(
                environment=deployment.function_environment(logical_id),
                credentials=credentials_of(register_role(self.principals, template, deployment, logical_id)),
                endpoint_url=front_door.endpoint_url,
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

        self.pumps = queue_pumps(
            template,
            deployment,
            self.functions,
            lambda: self.moto.client("sqs"),
            region=self.config.region,
        )
        for pump in self.pumps:
            pump.start()
        self.pipes = await loop.run_in_executor(
            None,
            lambda: pipe_pumps(
                template, deployment, self.principals, endpoint_url=front_door.endpoint_url, region=self.config.region
            ),
        )
        for pipe in self.pipes:
            pipe.start()
        # Provisioned: what moto holds now stays for the stack's life, so its full collections can skip it.
        frozen = await loop.run_in_executor(None, self.moto.freeze_heap)
        logger.debug("moto froze %s objects of its startup heap", frozen)
        interval = sweep_interval(template, self.config.sweep_interval)
        if interval:
            self._sweeper = loop.create_task(
                sweep_every(interval, template, self.functions, self.config.region), name="sweeper-schedule"
            )
        if self.config.simulator:
            self.simulator = MarketSimulator(
                lambda: self.moto.client("events"), rate=self.config.simulator_rate, event_bus_name=self.event_bus_name
            )
            self.simulator.start()

    def _settings_of(self, function: LambdaFunction) -> Settings:
        environment = dict(function.environment)
        environment.pop("QT_JWT_SECRET_ARN", None)
        return Settings.from_env({**environment, "QT_JWT_SECRET": self.secret})

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
            "LocalSigningKeySecretArn": self._deployment().ref(signing_key_secret(self.template)),
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
        await asyncio.gather(*(pump.stop() for pump in self.pumps), *(pipe.stop() for pipe in self.pipes))
        await asyncio.gather(*(function.aclose() for function in self.functions.values()))
        lap("pumps and functions")
        if self.front_door is not None:
            await loop.run_in_executor(None, self.front_door.stop)
            self.front_door = None
        await loop.run_in_executor(None, self.moto.stop)
        lap("moto")
        self._readiness.close()
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
        gateway = self.running_gateway()
        before = gateway.config
        gateway.config = dataclasses.replace(before, **changes)
        try:
            yield gateway.config
        finally:
            gateway.config = before

    async def _started_serving(self) -> bool:
        """The gateway answers before start-up is over (the smoke needs it): not ready until it is."""
        return self._serving

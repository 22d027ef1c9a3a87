"""The Lambda functions of `topology.FUNCTIONS`, each with its own least-privilege role and log group."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_cdk import AssetHashType, Aws, Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from cdk_nag import NagSuppressions
from constructs import Construct

from infra.auth import TokenKey
from infra.context import ContextError, settings_field_for_env, validated_settings
from infra.fanout import FanOut
from infra.layers_build import BUILD_DIR, LAMBDA_PYTHON_VERSION, ensure_compiled_copy
from infra.logs import retained_log_group
from infra.package_size import PackageSize, Part, check, measure
from infra.tables import Tables
from quanttrade_ws import topology

REPO_ROOT = Path(__file__).resolve().parent.parent
HANDLERS_DIR = REPO_ROOT / "handlers"
SHARED_LAYER_DIR = REPO_ROOT / "layers" / "shared"
ASSET_EXCLUDES = ["**/__pycache__", "**/*.pyc", ".pytest_cache", ".mypy_cache"]
# Where Lambda puts a function's code and its layers: the paths compiled into their byte code.
CODE_ON_LAMBDA = "/var/task"
LAYERS_ON_LAMBDA = "/opt"

RUNTIME = lambda_.Runtime.PYTHON_3_13
# The dependency layer holds compiled wheels for one CPython version; a runtime
# that differs from it would import them and crash at cold start.
if RUNTIME.name != f"python{LAMBDA_PYTHON_VERSION}":
    raise RuntimeError(f"{RUNTIME.name} does not match the layer build for Python {LAMBDA_PYTHON_VERSION}")

READ_ACTIONS = (
    "dynamodb:GetItem",
    "dynamodb:BatchGetItem",
    "dynamodb:Query",
    "dynamodb:DescribeTable",
)
WRITE_ACTIONS = (
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:BatchWriteItem",
    "dynamodb:ConditionCheckItem",
)
# The sweeper exists to find rows that no key leads to (connections whose
# $disconnect never ran) and the admin API's /stats counts what is there: both
# are Scans by nature. Nothing on the message or fan-out path may Scan.
SCANNING_FUNCTIONS = frozenset({topology.SWEEPER.name, topology.ADMIN.name})

_LOG_LEVELS = {
    "TRACE": lambda_.ApplicationLogLevel.TRACE,
    "DEBUG": lambda_.ApplicationLogLevel.DEBUG,
    "INFO": lambda_.ApplicationLogLevel.INFO,
    "WARN": lambda_.ApplicationLogLevel.WARN,
    "WARNING": lambda_.ApplicationLogLevel.WARN,
    "ERROR": lambda_.ApplicationLogLevel.ERROR,
    "CRITICAL": lambda_.ApplicationLogLevel.FATAL,
    "FATAL": lambda_.ApplicationLogLevel.FATAL,
}


def construct_name(function: topology.Function) -> str:
    return function.name.title()


def management_endpoint(api_id: str, stage_name: str) -> str:
    return f"https://{api_id}.execute-api.{Aws.REGION}.{Aws.URL_SUFFIX}/{stage_name}"


def manage_connections_arn(api_id: str, stage_name: str) -> str:
    # Any method (POST to send, GET for connection info, DELETE to close) on
    # any connection of this API's one stage, and nothing else.
    return f"arn:{Aws.PARTITION}:execute-api:{Aws.REGION}:{Aws.ACCOUNT_ID}:{api_id}/{stage_name}/*/@connections/*"


def connections_finding_pattern(stage_name: str) -> str:
    """cdk-nag's IAM5 finding for `manage_connections_arn`, as the regex a suppression's appliesTo takes."""
    return (
        r"/^Resource::arn:<AWS::Partition>:execute-api:<AWS::Region>:<AWS::AccountId>:<[A-Za-z0-9]+>\/"
        + re.escape(stage_name)
        + r"\/\*\/@connections\/\*$/"
    )


@dataclass(frozen=True)
class DepsLayerSource:
    path: Path
    content_hash: str | None  # None: let CDK hash the directory (the test stand-in)


class Functions(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        tables: Tables,
        fanout: FanOut,
        token_key: TokenKey,
        settings_overrides: dict[str, Any],
        websocket_api_id: str,
        stage_name: str,
        deps_layer: DepsLayerSource,
        log_retention_days: int,
        removal_policy: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id)
        self._tables = tables
        self._fanout = fanout
        self._api_id = websocket_api_id
        self._stage_name = stage_name

        # The project's own code ships as compiled copies: Lambda's code is read-only,
        # so without byte code in the asset every cold start compiles every import.
        shared = ensure_compiled_copy(SHARED_LAYER_DIR, BUILD_DIR / "shared-layer", LAYERS_ON_LAMBDA)
        handlers = ensure_compiled_copy(HANDLERS_DIR, BUILD_DIR / "handlers", CODE_ON_LAMBDA)
        # Every function is deployed with the same code and layers. Measured before any
        # asset is staged, so an oversized build fails before it is copied anywhere.
        package = (
            Part("code", handlers.path),
            Part("shared layer", shared.path),
            Part("deps layer", deps_layer.path, () if deps_layer.content_hash else tuple(ASSET_EXCLUDES)),
        )
        self.package_sizes: list[PackageSize] = measure({declared.name: package for declared in topology.FUNCTIONS})
        check(self.package_sizes)

        self.shared_layer = lambda_.LayerVersion(
            self,
            "SharedLayer",
            description="quanttrade_ws: domain, data access, gateway client, protocol, observability",
            code=lambda_.Code.from_asset(
                str(shared.path), asset_hash=shared.content_hash, asset_hash_type=AssetHashType.CUSTOM
            ),
            compatible_runtimes=[RUNTIME],
            compatible_architectures=[lambda_.Architecture.ARM_64],
        )
        deps_code = (
            lambda_.Code.from_asset(
                str(deps_layer.path), asset_hash=deps_layer.content_hash, asset_hash_type=AssetHashType.CUSTOM
            )
            if deps_layer.content_hash
            else lambda_.Code.from_asset(str(deps_layer.path), exclude=ASSET_EXCLUDES)
        )
        self.deps_layer = lambda_.LayerVersion(
            self,
            "DepsLayer",
            description="Third-party dependencies from requirements.lock (boto3 comes from the runtime)",
            code=deps_code,
            compatible_runtimes=[RUNTIME],
            compatible_architectures=[lambda_.Architecture.ARM_64],
        )
        handler_code = lambda_.Code.from_asset(
            str(handlers.path), asset_hash=handlers.content_hash, asset_hash_type=AssetHashType.CUSTOM
        )

        self.functions: dict[str, lambda_.Function] = {}
        self.log_groups: dict[str, logs.LogGroup] = {}
        self.roles: dict[str, iam.Role] = {}
        self.environments: dict[str, dict[str, str]] = {}
        for declared in topology.FUNCTIONS:
            name = construct_name(declared)
            settings = validated_settings(settings_overrides, **self._stack_settings(declared, token_key))
            log_group = retained_log_group(
                self, f"{name}LogGroup", days=log_retention_days, removal_policy=removal_policy
            )
            role = self._role(declared, log_group)
            environment = self._environment(declared, settings.to_env(), settings.log_level)
            token_key.grant_read(declared.name, role)
            function = lambda_.Function(
                self,
                f"{name}Function",
                description=f"QuantTrade WebSocket: {declared.name}",
                runtime=RUNTIME,
                architecture=lambda_.Architecture.ARM_64,
                handler=declared.handler,
                code=handler_code,
                layers=[self.shared_layer, self.deps_layer],
                memory_size=declared.memory_mb,
                timeout=Duration.seconds(declared.timeout_seconds),
                role=role,
                environment=environment,
                tracing=lambda_.Tracing.ACTIVE,
                log_group=log_group,
                logging_format=lambda_.LoggingFormat.JSON,
                application_log_level_v2=_application_log_level(settings.log_level),
                system_log_level_v2=lambda_.SystemLogLevel.INFO,
            )
            self._suppress_tracing_wildcard(role)
            # aws-cdk-lib makes a function with a given role DependsOn that role
            # as well as its policy, so the policy is attached before the first
            # invocation; the role half is redundant with the Role GetAtt and
            # cfn-lint says so (W3005). Silenced on these resources only.
            cfn_function = function.node.default_child
            assert isinstance(cfn_function, lambda_.CfnFunction)
            cfn_function.add_metadata("cfn-lint", {"config": {"ignore_checks": ["W3005"]}})
            NagSuppressions.add_resource_suppressions(
                function,
                [
                    {
                        "id": "AwsSolutions-L1",
                        "reason": "python3.13 is pinned on purpose: the dependency layer is built from CPython 3.13 "
                        "aarch64 wheels (infra/layers_build.py LAMBDA_PYTHON_VERSION), so the runtime may only move "
                        "together with that build, once every compiled dependency ships wheels for the newer one.",
                    }
                ],
            )
            self.functions[declared.name] = function
            self.log_groups[declared.name] = log_group
            self.roles[declared.name] = role
            self.environments[declared.name] = environment

    def __getitem__(self, declared: topology.Function) -> lambda_.Function:
        return self.functions[declared.name]

    def _queue_urls(self, declared: topology.Function) -> dict[str, str]:
        """Environment variable -> URL for every queue the function reads, writes or dead-letters into."""
        urls: dict[str, str] = {}
        for queue in (*declared.sends_to, *([declared.consumes] if declared.consumes else [])):
            urls[queue.env_var] = self._fanout.queue(queue).queue_url
        if declared.dead_letters_of is not None:
            queue = declared.dead_letters_of
            urls[queue.dlq_env_var] = self._fanout.dead_letter_queue(queue).queue_url
        return urls

    def _stack_settings(self, declared: topology.Function, token_key: TokenKey) -> dict[str, Any]:
        values: dict[str, Any] = {"region": Aws.REGION, **token_key.settings_values()}
        for table_declaration, table in self._tables.items():
            values[table_declaration.env_var.lower()] = table.table_name
        # Queue URLs that the settings model has a field for (delivery_queue_url,
        # events_dlq_url) travel in it too, so `to_env` and the plain variable agree.
        for env_var, url in self._queue_urls(declared).items():
            field = settings_field_for_env(env_var)
            if field is not None:
                values[field] = url
        if declared.posts_to_connections:
            values["management_endpoint"] = management_endpoint(self._api_id, self._stage_name)
        return values

    def _environment(self, declared: topology.Function, settings_env: dict[str, str], log_level: str) -> dict[str, str]:
        env = {**settings_env, **self._queue_urls(declared)}
        env.update(
            {
                "POWERTOOLS_SERVICE_NAME": topology.SERVICE_NAME,
                "POWERTOOLS_METRICS_NAMESPACE": topology.METRICS_NAMESPACE,
                "POWERTOOLS_LOG_LEVEL": log_level,
                # pydantic looks for plugins through importlib.metadata entry points when the first
                # model is built, which costs 20+ ms of every cold start; this service uses none.
                "PYDANTIC_DISABLE_PLUGINS": "1",
                **declared.extra_env,
            }
        )
        for secret in ("QT_JWT_SECRET", "QT_SESSION_SECRET"):
            if secret in env:
                raise ContextError(f"refusing to put {secret} into a function's environment")
        return env

    def _role(self, declared: topology.Function, log_group: logs.LogGroup) -> iam.Role:
        role = iam.Role(
            self,
            f"{construct_name(declared)}Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"QuantTrade {declared.name} function: only what topology declares for it",
        )
        # The log group's ARN already ends in ':*', which covers the streams
        # Lambda creates in it; no CreateLogGroup because the group exists.
        role.add_to_policy(
            iam.PolicyStatement(
                sid="WriteOwnLogs",
                actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                resources=[log_group.log_group_arn],
            )
        )
        for sid, tables, actions in (
            ("ReadTables", declared.reads, READ_ACTIONS),
            ("WriteTables", declared.writes, WRITE_ACTIONS),
        ):
            if not tables:
                continue
            resources: list[str] = []
            for table_declaration in tables:
                table = self._tables[table_declaration]
                resources.append(table.table_arn)
                if sid == "ReadTables":
                    # Indexes by name: only those the table declares.
                    resources += [f"{table.table_arn}/index/{index.name}" for index in table_declaration.indexes]
            role.add_to_policy(iam.PolicyStatement(sid=sid, actions=list(actions), resources=resources))
        if declared.name in SCANNING_FUNCTIONS and declared.reads:
            role.add_to_policy(
                iam.PolicyStatement(
                    sid="ScanTables",
                    actions=["dynamodb:Scan"],
                    resources=[self._tables[table].table_arn for table in declared.reads],
                )
            )
        if declared.posts_to_connections:
            role.add_to_policy(
                iam.PolicyStatement(
                    sid="ManageConnections",
                    actions=["execute-api:ManageConnections"],
                    resources=[manage_connections_arn(self._api_id, self._stage_name)],
                )
            )
            NagSuppressions.add_resource_suppressions(
                role,
                [
                    {
                        "id": "AwsSolutions-IAM5",
                        "reason": "Connection ids are assigned by API Gateway at run time, so the Management API "
                        "permission names this API and stage and leaves only the HTTP method and connection id "
                        "open.",
                        # cdk-nag reads `appliesTo` (camelCase) from a plain dict; the finding
                        # names the API by its logical id, so the pattern pins everything else.
                        "appliesTo": [{"regex": connections_finding_pattern(self._stage_name)}],
                    }
                ],
                apply_to_children=True,
            )
        send_to = [self._fanout.queue(queue) for queue in declared.sends_to]
        if declared.dead_letters_of is not None:
            send_to.append(self._fanout.dead_letter_queue(declared.dead_letters_of))
        if send_to:
            role.add_to_policy(
                iam.PolicyStatement(
                    sid="SendToQueues",
                    actions=["sqs:SendMessage"],
                    resources=[queue.queue_arn for queue in send_to],
                )
            )
        return role

    @staticmethod
    def _suppress_tracing_wildcard(role: iam.Role) -> None:
        NagSuppressions.add_resource_suppressions(
            role,
            [
                {
                    "id": "AwsSolutions-IAM5",
                    "reason": "xray:PutTraceSegments and xray:PutTelemetryRecords (added by active tracing) do not "
                    "support resource-level permissions, so their resource must be '*'.",
                    "appliesTo": ["Resource::*"],  # camelCase: cdk-nag ignores `applies_to` in a dict
                }
            ],
            apply_to_children=True,
        )


def _application_log_level(level: str) -> lambda_.ApplicationLogLevel:
    try:
        return _LOG_LEVELS[level.upper()]
    except KeyError:
        raise ContextError(f"settings.log_level {level!r} is not one of {sorted(_LOG_LEVELS)}") from None

"""What can be tuned at synth time, read from CDK context and validated before anything is built.

Two groups of keys, both settable in cdk.json or with `-c` on the command line
(command-line values arrive as strings and are coerced; a bad value fails synth):

Service settings (`quanttrade_ws.config.Settings`, passed to every function as
environment through `Settings.to_env()`):

    -c settings='{"limits": {"rooms_per_client": 5}, "chunk_size": 500}'   one JSON object
    -c settings.chunk_size=500                                           one field
    -c settings.limits.rooms_per_client=5                                one limit

Single-field keys win over the JSON object. Every `Settings` field is accepted
except those the stack itself owns: `region`, the table names, the queue and
dead-letter queue URLs, `management_endpoint`, `aws_endpoint_url` (local stack
only), `jwt_secret_arn` (bring an existing key with the infrastructure key
`jwt_secret_arn` instead), `session_secret_arn`, and `jwt_secret` and
`session_secret`, which are refused outright because a value given here would
end up in the template.

Access tokens from an OIDC issuer (with `jwks_url`) are checked as these say:

    -c settings.jwt_issuer=https://idp.example.com/            one issuer, or several comma-separated
    -c settings.jwt_audience=api://quanttrade                  the aud to require (default quanttrade-websocket)
    -c settings.jwt_client_id=CLIENT -c settings.jwt_token_use=access
                                                               Cognito: the app client instead of aud
    -c settings.jwt_permissions_claim=scope -c settings.jwt_scope_prefix=quanttrade/
                                                               permissions from OAuth scopes
    -c settings.jwt_permissions_claim=cognito:groups \
       -c settings.jwt_permission_map='{"traders": ["read:market_data"], "ops": ["admin"]}'
                                                               or from groups

With `cognito=true` the stack sets the algorithm, JWKS URL, issuer and app client itself
(refusing them and jwt_audience here) and defaults to access tokens with `quanttrade/`
scopes; jwt_token_use and the permission settings may still be changed.

Infrastructure keys (see `InfraConfig` for defaults):

    stage                      the deployment's name (prod): the stack is `QuantTrade-<stage>`, and every
                               explicitly named resource carries it (the bus `quanttrade-<stage>`, the
                               dashboard, the alarms, the API names), so stages share an account and region
    owner                      value of the Owner tag on every resource (quanttrade-platform); the tags
                               Project=QuantTrade and Stage=<stage> go on every resource too
    stage_name                 WebSocket API stage, also in the management endpoint; defaults to `stage`
                               (kept for stacks that chose an API stage apart from the deployment's name)
    throttle_rate_limit        default route throttling, requests per second (2000)
    throttle_burst_limit       default route throttling, burst (5000)
    log_retention_days         every log group, a CloudWatch Logs retention value (30)
    removal_policy             retain | destroy, for tables, secrets and log groups (retain). Retained
                               tables keep point-in-time recovery (35 days of backups) and deletion
                               protection; `snapshot` is refused, DynamoDB has no Snapshot deletion policy
    domain_name, certificate_arn   optional custom domain for the WebSocket API (both or neither)
    jwt_secret_arn             an existing Secrets Manager secret (complete ARN, or partial: the name
                               only) holding the HS256 access-token key; otherwise the stack generates
                               one. Either way its ARN is the JwtSecretArn output.
    jwt_secret_kms_key_arn     the customer managed KMS key that encrypts that secret, if any: the
                               functions that read it may then decrypt with it (through Secrets Manager)
    jwks_url                   verify access tokens with RS256 against this JWKS URL; no access-token
                               secret is then created (session tokens keep their generated key)
    cognito                    true: create a Cognito user pool, app client and resource server, and
                               verify its access tokens (see infra/cognito.py) (false)
    cognito_domain_prefix      the pool's managed-login domain prefix (<prefix>.auth.<region>.amazoncognito.com)
    cognito_callback_urls      the app client's OAuth callback URLs, comma-separated
                               (http://localhost:8080/callback)
    cognito_logout_urls        its sign-out URLs, comma-separated (http://localhost:8080/)
                               (jwt_secret_arn, jwks_url and cognito exclude each other)
    event_archive_retention_days   replay window of the event bus archive (30)
    delivery_lag_threshold_ms  DeliveryLag p99 alarm threshold (2000)
    queue_age_threshold_seconds    oldest-message age alarm on the source queues (300)
    alarm_email                optional address subscribed to the alarm topic
    apigw_account_logging_role create API Gateway's account-level CloudWatch role (true)
    account, region            pin the stack's environment; otherwise it is environment-agnostic
    deps_layer_dir             tests only: a prebuilt directory used instead of the real deps layer
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any, Literal

from constructs import Node
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from quanttrade_ws import topology
from quanttrade_ws.config import Settings

SETTINGS_KEY = "settings"


@functools.cache
def settings_field_for_env(env_var: str) -> str | None:
    """The `Settings` field that `Settings.from_env` fills from a resource variable (a table or queue)."""
    # Asking from_env itself keeps this mapping in one place, the settings
    # model, instead of repeating its naming rules here.
    probe = "probe:" + env_var
    parsed = Settings.from_env({env_var: probe, "QT_JWT_SECRET_ARN": "probe", "QT_SESSION_SECRET_ARN": "probe"})
    return next((name for name, value in parsed if value == probe), None)


def _resource_env_vars() -> list[str]:
    env_vars = [table.env_var for table in topology.TABLES]
    for queue in topology.QUEUES:
        env_vars += [queue.env_var, queue.dlq_env_var]
    return env_vars


# Fields the stack fills from the resources it creates; a context value for
# them would be silently overwritten, so it is rejected instead.
STACK_OWNED_SETTINGS = frozenset(
    {"region", "management_endpoint", "aws_endpoint_url", "jwt_secret_arn", "session_secret_arn"}
    | {field for field in map(settings_field_for_env, _resource_env_vars()) if field}
)

# CloudWatch Logs accepts only these retention periods.
VALID_RETENTION_DAYS = frozenset(
    {1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653}
)


class ContextError(ValueError):
    """A context value that cannot be used; raised during synth so nothing half-valid is deployed."""


PROJECT = "QuantTrade"
# A stage goes into the stack name (letters, digits, hyphens), the bus name and
# alarm names; 32 characters leaves every one of them well inside its limit.
STAGE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9-]{0,31}$"
# What AWS accepts in a tag value.
TAG_VALUE_PATTERN = r"^[\w .:/=+\-@]+$"


class InfraConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    stage: str = Field("prod", pattern=STAGE_PATTERN)
    owner: str = Field("quanttrade-platform", pattern=TAG_VALUE_PATTERN, max_length=256)
    stage_name: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,128}$")
    throttle_rate_limit: float = Field(2000, gt=0)
    throttle_burst_limit: int = Field(5000, ge=0)
    log_retention_days: int = 30
    removal_policy: Literal["retain", "destroy"] = "retain"
    domain_name: str | None = None
    certificate_arn: str | None = None
    jwks_url: str | None = None
    jwt_secret_arn: str | None = Field(
        None, pattern=r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]+$"
    )
    jwt_secret_kms_key_arn: str | None = Field(
        None, pattern=r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]+$"
    )
    cognito: bool = False
    cognito_domain_prefix: str | None = Field(None, pattern=r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
    cognito_callback_urls: tuple[str, ...] = ("http://localhost:8080/callback",)
    cognito_logout_urls: tuple[str, ...] = ("http://localhost:8080/",)
    event_archive_retention_days: int = Field(30, ge=1)
    delivery_lag_threshold_ms: float = Field(2000, gt=0)
    queue_age_threshold_seconds: int = Field(300, ge=60)
    alarm_email: str | None = None
    apigw_account_logging_role: bool = True
    account: str | None = None
    region: str | None = None
    deps_layer_dir: str | None = None

    @field_validator("removal_policy", mode="before")
    @classmethod
    def _no_snapshot(cls, value: Any) -> Any:
        if value == "snapshot":
            raise ValueError(
                "removal_policy=snapshot is not supported: DynamoDB tables have no Snapshot deletion policy, so "
                "CloudFormation rejects the template. Use 'retain': tables keep point-in-time recovery and "
                "deletion protection"
            )
        return value

    @field_validator("log_retention_days")
    @classmethod
    def _known_retention(cls, value: int) -> int:
        if value not in VALID_RETENTION_DAYS:
            raise ValueError(f"log_retention_days must be one of {sorted(VALID_RETENTION_DAYS)}")
        return value

    @field_validator("cognito_callback_urls", "cognito_logout_urls", mode="before")
    @classmethod
    def _url_list(cls, value: Any) -> Any:
        # `-c` gives one string: comma-separated URLs
        if isinstance(value, str):
            return tuple(url.strip() for url in value.split(",") if url.strip())
        return value

    @field_validator("cognito_callback_urls", "cognito_logout_urls")
    @classmethod
    def _cognito_accepts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Cognito refuses plain http except for localhost, at deploy time; say so at synth.
        for url in value:
            if not (url.startswith("https://") or re.match(r"^http://localhost(:\d+)?(/|$)", url)):
                raise ValueError(f"{url!r}: Cognito accepts https:// URLs, and http:// only for localhost")
        if not value:
            raise ValueError("give at least one URL")
        return value

    @model_validator(mode="after")
    def _domain_pair(self) -> InfraConfig:
        if bool(self.domain_name) != bool(self.certificate_arn):
            raise ValueError("domain_name and certificate_arn go together: give both or neither")
        return self

    @property
    def api_stage_name(self) -> str:
        """The WebSocket API's stage: `stage_name` when given, else the deployment's stage."""
        return self.stage_name or self.stage

    @property
    def stack_name(self) -> str:
        return f"{PROJECT}-{self.stage}"

    @property
    def event_bus_name(self) -> str:
        return f"{topology.EVENT_BUS_NAME}-{self.stage}"

    def physical_name(self, what: str) -> str:
        """The name of an explicitly named resource (dashboard, alarm, API): unique per stage."""
        return f"{PROJECT}-{self.stage}-{what}"

    @property
    def tags(self) -> dict[str, str]:
        return {"Project": PROJECT, "Stage": self.stage, "Owner": self.owner}

    @model_validator(mode="after")
    def _one_token_issuer(self) -> InfraConfig:
        chosen = [name for name in ("jwt_secret_arn", "jwks_url", "cognito") if getattr(self, name)]
        if len(chosen) > 1:
            raise ValueError(
                f"{' and '.join(chosen)} each say how access tokens are verified: give one "
                "(jwt_secret_arn: your HS256 key; jwks_url: your RS256 issuer; cognito: the stack's user pool)"
            )
        if self.jwt_secret_kms_key_arn and not self.jwt_secret_arn:
            raise ValueError("jwt_secret_kms_key_arn is the key of your secret: it needs jwt_secret_arn")
        if self.cognito_domain_prefix and not self.cognito:
            raise ValueError("cognito_domain_prefix is the user pool's domain: it needs cognito=true")
        return self


def _parse_json_object(key: str, raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as error:
            raise ContextError(f"context '{key}' is not valid JSON: {error}") from error
    if not isinstance(raw, dict):
        raise ContextError(f"context '{key}' must be a JSON object, got {type(raw).__name__}")
    return dict(raw)


def _context_dict(node: Node) -> dict[str, Any]:
    # `try_get_context` needs a key, and the dotted settings keys are
    # open-ended, so read everything the node sees (cdk.json and -c included).
    return dict(node.get_all_context() or {})


def settings_overrides(node: Node) -> dict[str, Any]:
    """The `Settings` fields that context sets, as a nested dict ready for `Settings(**...)`."""
    context = _context_dict(node)
    values = _parse_json_object(SETTINGS_KEY, context.get(SETTINGS_KEY))
    limits = _parse_json_object(f"{SETTINGS_KEY}.limits", values.pop("limits", None))
    prefix = SETTINGS_KEY + "."
    for key, value in context.items():
        if not key.startswith(prefix):
            continue
        path = key[len(prefix) :].split(".")
        if len(path) == 2 and path[0] == "limits":
            limits[path[1]] = value
        elif len(path) == 1:
            values[path[0]] = value
        else:
            raise ContextError(f"context key '{key}' does not name a settings field")
    if limits:
        values["limits"] = limits

    if "jwt_secret" in values:
        raise ContextError(
            "settings.jwt_secret cannot be set through context: it would be written into the template. "
            "The stack generates the HS256 key in Secrets Manager; use jwks_url for RS256."
        )
    if "session_secret" in values:
        raise ContextError(
            "settings.session_secret cannot be set through context: it would be written into the template. "
            "The stack generates the session-token key in Secrets Manager."
        )
    if "jwt_secret_arn" in values:
        raise ContextError(
            "settings.jwt_secret_arn is filled in by the stack. To verify access tokens with an existing "
            "Secrets Manager secret, give its ARN as the infrastructure key: -c jwt_secret_arn=arn:aws:secretsmanager:"
            "... (the stack then imports it and grants read access to the functions that verify tokens)"
        )
    owned = STACK_OWNED_SETTINGS.intersection(values)
    if owned:
        raise ContextError(f"settings {sorted(owned)} are set by the stack from the resources it creates")
    unknown = set(values) - set(Settings.model_fields)
    if unknown:
        raise ContextError(f"unknown settings {sorted(unknown)}; known: {sorted(Settings.model_fields)}")
    return values


def infra_config(node: Node) -> InfraConfig:
    context = _context_dict(node)
    values = {name: context[name] for name in InfraConfig.model_fields if context.get(name) not in (None, "")}
    try:
        return InfraConfig(**values)
    except ValidationError as error:
        raise ContextError(f"invalid infrastructure context:\n{error}") from error


def validated_settings(overrides: dict[str, Any], **stack_values: Any) -> Settings:
    """Build `Settings` from context overrides plus what the stack provides; bad values fail synth."""
    merged = {**overrides, **stack_values}
    if isinstance(overrides.get("limits"), dict):
        merged["limits"] = dict(overrides["limits"])
    try:
        return Settings(**merged)
    except ValidationError as error:
        raise ContextError(f"invalid service settings from context:\n{error}") from error

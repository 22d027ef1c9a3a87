"""Settings: one validated model, read from the environment in handlers only.

Domain code receives a `Settings` instance; it never reads os.environ. The
defaults are the product's published limits (docs/PROTOCOL.md, "Limits and
costs"). The CDK stack sets each field from context, and the local stack from
its own command line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from quanttrade_ws import topology

ENV_PREFIX = "QT_"
DEFAULT_ISSUER = "quanttrade-auth"
DEFAULT_AUDIENCE = "quanttrade-websocket"
# Claims that RFC 9068 and the OIDC providers define as one space-separated string, not a list.
SPACE_SEPARATED_CLAIMS = frozenset({"scope", "scp"})
MIN_COALESCE_WINDOW_MS = 50
MAX_COALESCE_WINDOW_MS = 200


def _names(value: Any) -> Any:
    """One name, a comma-separated string of names (how `-c` and the environment carry them) or a JSON list."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"not a JSON list: {error}") from None
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Limits(BaseModel):
    """Per-client limits: what the `hello` reply announces and each action is checked against."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rooms_per_client: int = Field(10, ge=1)
    clients_per_room: int = Field(1000, ge=1)
    subscriptions_free: int = Field(5, ge=0)
    subscriptions_basic: int = Field(20, ge=0)
    subscriptions_premium: int = Field(50, ge=0)
    subscriptions_enterprise: int = Field(50, ge=0)
    room_message_bytes: int = Field(4096, ge=1)
    # Rate budget per connection and second, in units of protocol.ACTION_COSTS (a ping is 1).
    messages_per_second: int = Field(100, ge=1)
    rate_limit_warnings: int = Field(3, ge=0)  # RATE_LIMIT replies before the connection is closed
    resume_messages: int = Field(5000, ge=1)  # messages one resume replays, over all its streams
    resumes_per_connection: int = Field(3, ge=1)  # per minute, sliding window: a client resumes twice
    room_messages_per_minute: int = Field(60, ge=1)  # per user and room, sliding window
    # Joins per user and room, sliding window: each join and leave of a chat room is a post to every member.
    room_joins_per_minute: int = Field(10, ge=1)
    presence_max_members: int = Field(100, ge=0)  # no join/leave notices in rooms with more members
    connections_per_minute: int = Field(60, ge=1)  # new connections per user, sliding window
    connections_per_user: int = Field(10, ge=1)  # open at once per user
    max_message_bytes: int = Field(128 * 1024, ge=1)

    def subscriptions_for(self, level: str) -> int:
        return int(getattr(self, f"subscriptions_{level}", self.subscriptions_free))


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # where things are
    region: str = "us-east-1"
    connections_table: str = "quanttrade-connections"
    subscriptions_table: str = "quanttrade-subscriptions"
    rooms_table: str = "quanttrade-rooms"
    streams_table: str = "quanttrade-streams"
    delivery_queue_url: str = ""
    events_dlq_url: str = ""
    aws_endpoint_url: str | None = None  # local stack: moto server
    management_endpoint: str | None = (
        None  # API Gateway Management API (https://{api}.execute-api.{region}.amazonaws.com/{stage})
    )

    # authentication
    jwt_algorithm: Literal["HS256", "RS256"] = "HS256"
    jwt_secret: str | None = Field(None, repr=False)
    jwt_secret_arn: str | None = None  # Secrets Manager secret holding the HS256 key
    session_secret: str | None = Field(None, repr=False)  # signs session tokens; never the access-token key
    session_secret_arn: str | None = None  # Secrets Manager secret holding the session-token key
    key_cache_seconds: int = Field(300, ge=0)  # how long a warm function may use a key read from Secrets Manager
    jwks_url: str | None = None
    # Access-token claims checked besides the signature and expiry (see `TokenVerifier`):
    # `iss` is one of jwt_issuer; `aud` is one of jwt_audience (default quanttrade-websocket) unless
    # jwt_client_id is given, which checks the app client the Cognito way instead: `client_id` in access
    # tokens, `aud` in ID tokens, as `token_use` (jwt_token_use, then required) says the token is.
    jwt_issuer: tuple[str, ...] = Field((DEFAULT_ISSUER,), min_length=1)
    jwt_audience: tuple[str, ...] | None = None
    jwt_client_id: tuple[str, ...] = ()
    jwt_token_use: Literal["access", "id"] | None = None
    # Where permissions come from: this claim (a list of strings; `scope` and `scp` a space-separated
    # string), each value without jwt_scope_prefix (a resource server's `identifier/`; values without it
    # are other APIs' scopes and ignored), then through jwt_permission_map if it is given (group -> permissions).
    jwt_permissions_claim: str = Field("permissions", min_length=1)
    jwt_scope_prefix: str = ""
    jwt_permission_map: dict[str, tuple[str, ...]] = {}
    token_expiry_hours: int = Field(24, ge=1)
    refresh_window_days: int = Field(7, ge=1)

    # lifecycle (API Gateway's own limits)
    connection_ttl_seconds: int = Field(3 * 3600, ge=60)  # beyond API Gateway's 2 hour maximum
    idle_timeout_seconds: int = Field(600, ge=1)

    # replay
    history_seconds: int = Field(300, ge=1)
    history_messages: int = Field(1000, ge=1)

    # fan-out
    chunk_size: int = Field(1000, ge=1)  # audiences larger than this go out as delivery chunks
    post_concurrency: int = Field(64, ge=1)
    subscriber_cache_seconds: float = Field(0.5, ge=0)
    max_post_attempts: int = Field(6, ge=1)
    # Coalescing window (0: off). The operator's trade of latency for API Gateway messages, not the client's:
    # see fanout.EventFanOut._linger. Bounded so no setting can hold a function, or a client's data, for long.
    coalesce_window_ms: int = Field(0, ge=0, le=MAX_COALESCE_WINDOW_MS)

    limits: Limits = Limits()
    log_level: str = "INFO"

    @field_validator("jwt_issuer", "jwt_audience", "jwt_client_id", mode="before")
    @classmethod
    def _parse_names(cls, value: Any) -> Any:
        return _names(value)

    @field_validator("jwt_issuer", "jwt_audience", "jwt_client_id")
    @classmethod
    def _plain_names(cls, value: tuple[str, ...] | None, info: ValidationInfo) -> tuple[str, ...] | None:
        # Commas separate names in the environment, so a name may not hold one.
        if value is None or (not value and info.field_name == "jwt_client_id"):
            return value
        if not value or any(not name or "," in name for name in value):
            raise ValueError("give one or more non-empty names, none with a comma")
        return value

    @field_validator("coalesce_window_ms")
    @classmethod
    def _window_or_off(cls, value: int) -> int:
        if value and value < MIN_COALESCE_WINDOW_MS:
            raise ValueError(
                f"a coalescing window is 0 (off) or {MIN_COALESCE_WINDOW_MS}-{MAX_COALESCE_WINDOW_MS} ms: "
                "below that it saves next to nothing"
            )
        return value

    @field_validator("jwt_permission_map", mode="before")
    @classmethod
    def _parse_map(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as error:
                raise ValueError(f"not a JSON object of claim value -> [permissions]: {error}") from None
        return value

    @field_validator("jwt_permission_map")
    @classmethod
    def _known_permissions(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        if not value:
            return value  # every function builds settings at cold start: import auth only when there is a map
        from quanttrade_ws.auth import KNOWN_PERMISSIONS  # auth builds on this module

        unknown = sorted({p for permissions in value.values() for p in permissions} - KNOWN_PERMISSIONS)
        if unknown:
            raise ValueError(f"maps to unknown permissions {unknown}; known: {sorted(KNOWN_PERMISSIONS)}")
        return value

    def access_token_audience(self) -> tuple[str, ...] | None:
        """The `aud` values an access token may carry; None when its app client is checked instead."""
        if self.jwt_client_id:
            return None
        return self.jwt_audience or (DEFAULT_AUDIENCE,)

    @model_validator(mode="after")
    def _check_auth(self) -> Settings:
        if self.jwt_client_id and self.jwt_audience:
            raise ValueError(
                "check the token's audience (jwt_audience) or its app client (jwt_client_id), not both: "
                "Cognito access tokens carry no aud"
            )
        if self.jwt_client_id and not self.jwt_token_use:
            raise ValueError(
                "jwt_client_id needs jwt_token_use (access or id): Cognito access tokens name the app client "
                "in client_id, ID tokens in aud"
            )
        if self.jwt_algorithm == "RS256" and not self.jwks_url:
            raise ValueError("RS256 needs jwks_url")
        if self.jwt_algorithm == "HS256" and not (self.jwt_secret or self.jwt_secret_arn):
            raise ValueError("HS256 access tokens need their key: jwt_secret or jwt_secret_arn")
        if not (self.session_secret or self.session_secret_arn):
            raise ValueError("session tokens need a key of their own: session_secret or session_secret_arn")
        if self.session_secret and self.session_secret == self.jwt_secret:
            raise ValueError("session_secret must differ from jwt_secret: each kind of token has its own key")
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `QT_*` variables and the table/queue variables the stack sets."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        limits: dict[str, str] = {}
        for key, value in env.items():
            if key.startswith(ENV_PREFIX + "LIMIT_"):
                limits[key[len(ENV_PREFIX) + 6 :].lower()] = value
            elif key.startswith(ENV_PREFIX):
                name = key[len(ENV_PREFIX) :].lower()
                if name in cls.model_fields and name != "limits":
                    values[name] = value
        for table in topology.TABLES:
            if table.env_var in env:
                values[table.env_var.lower()] = env[table.env_var]
        if topology.DELIVERY_QUEUE.env_var in env:
            values["delivery_queue_url"] = env[topology.DELIVERY_QUEUE.env_var]
        if topology.EVENTS_QUEUE.dlq_env_var in env:
            values["events_dlq_url"] = env[topology.EVENTS_QUEUE.dlq_env_var]
        if "AWS_REGION" in env and "region" not in values:
            values["region"] = env["AWS_REGION"]
        if limits:
            values["limits"] = limits
        return cls.model_validate(values)

    def to_env(self) -> dict[str, str]:
        """The inverse of `from_env`: environment variables that rebuild these settings."""
        table_fields = {table.env_var.lower() for table in topology.TABLES}
        env: dict[str, str] = {}
        for name, value in self.model_dump(exclude={"limits"} | table_fields).items():
            if isinstance(value, tuple):
                if value:
                    env[ENV_PREFIX + name.upper()] = ",".join(value)
            elif isinstance(value, dict):
                if value:
                    env[ENV_PREFIX + name.upper()] = json.dumps(value, sort_keys=True)
            elif value is not None:
                env[ENV_PREFIX + name.upper()] = str(value)
        for name, value in self.limits.model_dump().items():
            env[f"{ENV_PREFIX}LIMIT_{name.upper()}"] = str(value)
        for table in topology.TABLES:
            env[table.env_var] = getattr(self, table.env_var.lower())
        return env

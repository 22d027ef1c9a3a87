"""What a function's configuration may set: its variables (never Lambda's own), its role's credentials, its account."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_REGION = "us-east-1"
DEFAULT_ACCOUNT = "123456789012"  # moto's default account, so ARNs line up with the local AWS resources

# Variables the Lambda service sets itself; a function's configuration may not (CloudFormation rejects them).
RESERVED_VARIABLES = frozenset(
    {
        "_HANDLER",
        "_X_AMZN_TRACE_ID",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_EXECUTION_ENV",
        "AWS_LAMBDA_FUNCTION_NAME",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
        "AWS_LAMBDA_FUNCTION_VERSION",
        "AWS_LAMBDA_INITIALIZATION_TYPE",
        "AWS_LAMBDA_LOG_GROUP_NAME",
        "AWS_LAMBDA_LOG_STREAM_NAME",
        "AWS_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_LAMBDA_RUNTIME_API",
        "LAMBDA_TASK_ROOT",
        "LAMBDA_RUNTIME_DIR",
    }
)


@dataclass(frozen=True)
class Credentials:
    """The keys of the function's execution role, as Lambda hands them to the runtime."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def to_env(self) -> dict[str, str]:
        env = {"AWS_ACCESS_KEY_ID": self.access_key_id, "AWS_SECRET_ACCESS_KEY": self.secret_access_key}
        if self.session_token:
            env["AWS_SESSION_TOKEN"] = self.session_token
        return env


def validated_environment(name: str, environment: Mapping[str, str] | None) -> dict[str, str]:
    """A copy of function `name`'s variables; ValueError if one is reserved to Lambda or not a string."""
    env = dict(environment or {})
    reserved = sorted(RESERVED_VARIABLES & env.keys())
    if reserved:
        raise ValueError(f"{name}: reserved Lambda environment variables cannot be configured: {reserved}")
    not_strings = sorted(key for key, value in env.items() if not isinstance(value, str))
    if not_strings:
        raise ValueError(f"{name}: environment values must be strings: {not_strings}")
    return env

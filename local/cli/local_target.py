"""The running local stack as the commands' target: its URLs, its signing key and its event bus.

`make dev` writes the stack's outputs (`local.stack.config.OUTPUTS_FILE`); the
commands read the signing key's secret and the bus name from there.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

DEFAULT_WS_URL = "ws://127.0.0.1:8081/"
DEFAULT_HTTP_URL = "http://127.0.0.1:8081"
DEFAULT_AWS_ENDPOINT = "http://127.0.0.1:4566"
ADMIN_PREFIX = "/admin"  # where the local gateway serves the admin API's routes


def local_signing_key() -> str:
    """The HS256 key the running local stack holds.

    `$QT_JWT_SECRET` when set (`make dev` then stores that value in the stack's
    secret); otherwise the value the stack generated, read from its Secrets
    Manager through the outputs file `make dev` writes.
    """
    secret = os.environ.get("QT_JWT_SECRET")
    if secret:
        return secret
    try:
        outputs = _running_stack_outputs()
        endpoint, secret_arn = outputs["LocalAwsEndpoint"], outputs["LocalSigningKeySecretArn"]
    except (OSError, ValueError, StopIteration, KeyError, AttributeError, TypeError):
        raise SystemExit(
            "no local stack is running (start it with `make dev`), and QT_JWT_SECRET is not set: "
            "there is no key to mint a token with"
        ) from None
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    from local.moto_server import CREDENTIALS

    make_client: Any = boto3.client
    client = make_client("secretsmanager", region_name=secret_arn.split(":")[3], endpoint_url=endpoint, **CREDENTIALS)
    try:
        return str(client.get_secret_value(SecretId=secret_arn)["SecretString"])
    except (BotoCoreError, ClientError) as error:
        raise SystemExit(f"cannot read the local stack's signing key at {endpoint}: {error}") from None


def local_event_bus() -> str:
    """The bus of the running local stack: the EventBusName output of the template it runs (it carries the stage)."""
    try:
        return str(_running_stack_outputs()["EventBusName"])
    except (OSError, ValueError, StopIteration, KeyError, AttributeError, TypeError):
        raise SystemExit(
            "no local stack is running (start it with `make dev`) to take the event bus name from: "
            "give --bus NAME, or --outputs/--stack for a deployed stack"
        ) from None


def local_region() -> str:
    """The region the running local stack serves, whatever $AWS_REGION says.

    The stack lives in one region (its ARNs carry it), and it refuses what is
    signed for another, as AWS would: a developer's shell set up for a deployed
    stage must not break the local commands. Without a running stack, the
    region `make dev` uses.
    """
    from local.stack.config import StackConfig

    try:
        return str(_running_stack_outputs()["LocalSigningKeySecretArn"]).split(":")[3]
    except (OSError, ValueError, StopIteration, KeyError, AttributeError, TypeError, IndexError):
        return StackConfig().region


def _running_stack_outputs() -> Any:
    """The outputs `make dev` wrote for the stack it runs (raises OSError or ValueError when there is none)."""
    from local.stack.config import OUTPUTS_FILE

    return next(iter(json.loads(OUTPUTS_FILE.read_text(encoding="utf-8")).values()))


def quiet_development_warnings() -> None:
    # The development secret is short on purpose: the warning says nothing a developer can act on.
    warnings.filterwarnings("ignore", message=r"The HMAC key is \d+ bytes long")

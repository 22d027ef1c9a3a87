"""The key the functions verify access tokens with: the secret `QT_JWT_SECRET_ARN` names in the template."""

from __future__ import annotations

from local.cloud.deployment import Deployment
from local.cloud.template import Template
from local.moto_server import MotoServer
from local.stack.config import StackStartError


def signing_key_secret(template: Template) -> str:
    """The logical id of the secret the functions verify access tokens with: the one `QT_JWT_SECRET_ARN` names."""
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


def read_signing_key(moto: MotoServer, template: Template, deployment: Deployment) -> str:
    """The key the stack's secret holds, read through Secrets Manager as the functions read it."""
    arn = deployment.ref(signing_key_secret(template))
    return str(moto.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"])

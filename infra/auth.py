"""The service's signing key and who may read it.

A generated key in Secrets Manager signs session-resume tokens in every mode
and, with HS256, also verifies access tokens. Functions receive only its ARN
(`QT_JWT_SECRET_ARN`) and fetch the value at run time, so the key is never in
an environment variable, the template or the cloud assembly. With RS256
(context `jwks_url`) access tokens are verified against the public keys at
that URL, which is not a secret and is passed as is.
"""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_secretsmanager as secretsmanager
from cdk_nag import NagSuppressions
from constructs import Construct

from quanttrade_ws import topology

# The authorizer verifies access tokens with the key; the message function
# checks refreshed access tokens and signs and checks session-resume tokens.
# Every other function gets the secret's ARN (settings validation) but reads it
# lazily and never needs it, so it gets no grant.
KEY_READERS = frozenset({topology.AUTHORIZER.name, topology.MESSAGE.name})


class TokenKey(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, jwks_url: str | None, removal_policy: RemovalPolicy):
        super().__init__(scope, construct_id)
        self.jwks_url = jwks_url
        self.secret = secretsmanager.Secret(
            self,
            "JwtSigningKey",
            description="Key that signs QuantTrade session tokens (and, with HS256, access tokens)",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                password_length=64, exclude_punctuation=True, include_space=False
            ),
            removal_policy=removal_policy,
        )
        NagSuppressions.add_resource_suppressions(
            self.secret,
            [
                {
                    "id": "AwsSolutions-SMG4",
                    "reason": "A scheduled rotation of this signing key would invalidate every issued token at "
                    "once and force all clients to re-authenticate; it is rotated deliberately by operators. "
                    "Deployments that need rolling rotation of access-token keys use RS256 with jwks_url.",
                }
            ],
        )

    def settings_values(self) -> dict[str, str]:
        """The `Settings` fields that tell a function where its keys are."""
        values = {"jwt_secret_arn": self.secret.secret_arn}
        if self.jwks_url:
            values.update(jwt_algorithm="RS256", jwks_url=self.jwks_url)
        return values

    def grant_read(self, function_name: str, grantee: iam.IGrantable) -> None:
        if function_name in KEY_READERS:
            self.secret.grant_read(grantee)

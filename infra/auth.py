"""The service's signing keys and who may read them.

Two generated keys in Secrets Manager, one per kind of token: the access-token
key verifies HS256 access tokens (shared with the platform's auth service), the
session key signs and checks session-resume tokens and nothing else. Functions
receive only the ARNs (`QT_JWT_SECRET_ARN`, `QT_SESSION_SECRET_ARN`) and fetch
the values at run time through a cache of bounded age (`key_cache_seconds`),
accepting the AWSCURRENT and the AWSPREVIOUS version, so a key is never in an
environment variable, the template or the cloud assembly, and a rotation needs
no redeploy. With RS256 (context `jwks_url`) access tokens are verified against
the public keys at that URL, which is not a secret and is passed as is.
"""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_secretsmanager as secretsmanager
from cdk_nag import NagSuppressions
from constructs import Construct

from quanttrade_ws import topology

# The authorizer verifies access tokens; the message function checks refreshed
# access tokens, and alone signs and checks session-resume tokens. Every other
# function gets the secrets' ARNs (settings validation) but reads them lazily
# and never needs them, so it gets no grant.
KEY_READERS = frozenset({topology.AUTHORIZER.name, topology.MESSAGE.name})
SESSION_KEY_READERS = frozenset({topology.MESSAGE.name})

ROTATION_REASON = (
    "Rotation is deliberate, by operators (a new AWSCURRENT version): functions re-read keys within "
    "key_cache_seconds and accept the AWSCURRENT and AWSPREVIOUS versions, so tokens signed just before a "
    "rotation keep verifying; rotating again before those expire would invalidate them, which a fixed schedule "
    "cannot know. Deployments that need automated rotation of access-token keys use RS256 with jwks_url."
)


class TokenKey(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, jwks_url: str | None, removal_policy: RemovalPolicy):
        super().__init__(scope, construct_id)
        self.jwks_url = jwks_url
        self.secret = self._key("JwtSigningKey", "Key that verifies QuantTrade HS256 access tokens", removal_policy)
        self.session_secret = self._key(
            "SessionSigningKey", "Key that signs QuantTrade session-resume tokens (only those)", removal_policy
        )

    def _key(self, construct_id: str, description: str, removal_policy: RemovalPolicy) -> secretsmanager.Secret:
        secret = secretsmanager.Secret(
            self,
            construct_id,
            description=description,
            generate_secret_string=secretsmanager.SecretStringGenerator(
                password_length=64, exclude_punctuation=True, include_space=False
            ),
            removal_policy=removal_policy,
        )
        NagSuppressions.add_resource_suppressions(secret, [{"id": "AwsSolutions-SMG4", "reason": ROTATION_REASON}])
        return secret

    def settings_values(self) -> dict[str, str]:
        """The `Settings` fields that tell a function where its keys are."""
        values = {"jwt_secret_arn": self.secret.secret_arn, "session_secret_arn": self.session_secret.secret_arn}
        if self.jwks_url:
            values.update(jwt_algorithm="RS256", jwks_url=self.jwks_url)
        return values

    def grant_read(self, function_name: str, grantee: iam.IGrantable) -> None:
        if function_name in KEY_READERS:
            self.secret.grant_read(grantee)
        if function_name in SESSION_KEY_READERS:
            self.session_secret.grant_read(grantee)

"""An optional Cognito user pool that issues the service's access tokens (context `cognito=true`).

A user pool, a public app client (no secret: browsers, mobile and desktop apps
sign in with the authorization code grant and PKCE through the pool's managed
login, or with SRP), and a resource server `quanttrade` whose scopes are the
product's permissions (`quanttrade/read:market_data`, ..., `quanttrade/admin`).
The stack then verifies access tokens against this pool: RS256 against its JWKS,
its issuer, `token_use: access`, the app client in `client_id`, and the
permissions from the `scope` claim without the `quanttrade/` prefix. Scopes
appear in access tokens from the OAuth endpoints (managed login, the domain of
context `cognito_domain_prefix`); an operator who signs users in with SRP
instead maps groups (`settings.jwt_permissions_claim=cognito:groups` and
`settings.jwt_permission_map`).
"""

from __future__ import annotations

from typing import Any

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_cognito as cognito
from cdk_nag import NagSuppressions
from constructs import Construct

from quanttrade_ws.auth import ALL_PERMISSIONS

RESOURCE_SERVER_ID = "quanttrade"
SCOPE_PREFIX = f"{RESOURCE_SERVER_ID}/"

# Settings the stack fills from the pool; context may not set them too (they would disagree).
POOL_OWNED_SETTINGS = frozenset({"jwt_algorithm", "jwks_url", "jwt_issuer", "jwt_audience", "jwt_client_id"})


def pool_default_settings(overrides: dict[str, Any]) -> dict[str, Any]:
    """What context leaves open, filled for the pool's access tokens and scopes.

    Context may choose otherwise: ID tokens, or groups mapped to permissions (the
    scope prefix then does not apply, unless given too).
    """
    defaults: dict[str, Any] = {"jwt_token_use": "access"}
    if "jwt_permissions_claim" not in overrides:
        defaults.update(jwt_permissions_claim="scope", jwt_scope_prefix=SCOPE_PREFIX)
    return {**defaults, **overrides}


MFA_REASON = (
    "MFA is offered (optional, TOTP) rather than required: the pool also serves trading bots and "
    "kiosk dashboards that sign in without a person present, and the platform team enforces MFA for "
    "people through their own sign-in policy or a federated identity provider."
)
THREAT_PROTECTION_REASON = (
    "Threat protection (advanced security) needs the Cognito Plus feature plan, priced per monthly active "
    "user; the platform team turns it on when their risk assessment asks for it. Sign-up is closed (users "
    "are created by administrators) and passwords follow a strong policy meanwhile."
)


class CognitoIdentity(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        callback_urls: list[str],
        logout_urls: list[str],
        domain_prefix: str | None,
        removal_policy: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id)
        self.user_pool = cognito.UserPool(
            self,
            "UserPool",
            self_sign_up_enabled=False,
            sign_in_aliases=cognito.SignInAliases(username=True, email=True),
            auto_verify=cognito.AutoVerifiedAttrs(email=True),
            password_policy=cognito.PasswordPolicy(
                min_length=12,
                require_lowercase=True,
                require_uppercase=True,
                require_digits=True,
                require_symbols=True,
                temp_password_validity=Duration.days(3),
            ),
            mfa=cognito.Mfa.OPTIONAL,
            mfa_second_factor=cognito.MfaSecondFactor(otp=True, sms=False),
            account_recovery=cognito.AccountRecovery.EMAIL_ONLY,
            removal_policy=removal_policy,
        )
        NagSuppressions.add_resource_suppressions(
            self.user_pool,
            [
                {"id": "AwsSolutions-COG2", "reason": MFA_REASON},
                {"id": "AwsSolutions-COG3", "reason": THREAT_PROTECTION_REASON},
                {"id": "AwsSolutions-COG8", "reason": THREAT_PROTECTION_REASON},
            ],
        )
        self.scopes = [
            cognito.ResourceServerScope(scope_name=permission, scope_description=f"QuantTrade permission {permission}")
            for permission in ALL_PERMISSIONS
        ]
        self.resource_server = self.user_pool.add_resource_server(
            "ResourceServer",
            identifier=RESOURCE_SERVER_ID,
            user_pool_resource_server_name="QuantTrade WebSocket API",
            scopes=self.scopes,
        )
        self.client = self.user_pool.add_client(
            "AppClient",
            generate_secret=False,
            auth_flows=cognito.AuthFlow(user_srp=True),
            o_auth=cognito.OAuthSettings(
                flows=cognito.OAuthFlows(authorization_code_grant=True),
                scopes=[
                    cognito.OAuthScope.OPENID,
                    *(cognito.OAuthScope.resource_server(self.resource_server, scope) for scope in self.scopes),
                ],
                callback_urls=callback_urls,
                logout_urls=logout_urls,
            ),
            prevent_user_existence_errors=True,
            access_token_validity=Duration.hours(1),
            id_token_validity=Duration.hours(1),
            refresh_token_validity=Duration.days(30),
        )
        self.domain = (
            self.user_pool.add_domain(
                "Domain", cognito_domain=cognito.CognitoDomainOptions(domain_prefix=domain_prefix)
            )
            if domain_prefix
            else None
        )

    @property
    def issuer(self) -> str:
        # ProviderURL is the issuer without its scheme: cognito-idp.<region>.amazonaws.com/<pool id>
        return f"https://{self.user_pool.user_pool_provider_url}"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/.well-known/jwks.json"

    def verification(self) -> dict[str, Any]:
        """The `Settings` fields that verify this pool's tokens (beside `pool_default_settings`)."""
        return {
            "jwt_algorithm": "RS256",
            "jwks_url": self.jwks_url,
            "jwt_issuer": self.issuer,
            "jwt_client_id": self.client.user_pool_client_id,
        }

"""QuantTradeStack: every concern's construct, wired together in dependency order."""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, RemovalPolicy, Stack
from constructs import Construct

from infra.admin_api import AdminApi
from infra.auth import TokenKey
from infra.cognito import POOL_OWNED_SETTINGS, RESOURCE_SERVER_ID, CognitoIdentity, pool_default_settings
from infra.context import ContextError, InfraConfig, settings_overrides, validated_settings
from infra.fanout import FanOut
from infra.functions import DepsLayerSource, Functions
from infra.monitoring import Monitoring
from infra.sweeper import Sweeper
from infra.tables import Tables
from infra.websocket_api import WebSocketApi
from quanttrade_ws import topology

REMOVAL_POLICIES = {"retain": RemovalPolicy.RETAIN, "destroy": RemovalPolicy.DESTROY}


class QuantTradeStack(Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: InfraConfig,
        deps_layer: DepsLayerSource,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        overrides = settings_overrides(self.node)
        jwks_url = config.jwks_url or overrides.pop("jwks_url", None)
        if jwks_url and overrides.pop("jwt_algorithm", "RS256") != "RS256":
            raise ContextError("jwks_url is given, so access tokens are RS256; settings.jwt_algorithm disagrees")
        if jwks_url and config.jwt_secret_arn:
            raise ContextError("jwt_secret_arn is an HS256 key, and settings.jwks_url makes access tokens RS256")
        if config.cognito:
            clash = sorted(POOL_OWNED_SETTINGS.intersection(overrides)) + (["jwks_url"] if jwks_url else [])
            if clash:
                raise ContextError(
                    f"cognito=true verifies the stack's own user pool; settings {clash} would contradict it"
                )
            overrides = pool_default_settings(overrides)
        # Validate the context's settings before any resource exists, with
        # placeholders for what the stack will fill in, so a bad value fails
        # with one clear message instead of one per function.
        placeholders: dict[str, str] = {"jwt_secret_arn": "pending", "session_secret_arn": "pending"}
        if jwks_url:
            placeholders.update(jwt_algorithm="RS256", jwks_url=jwks_url)
        if config.cognito:
            placeholders.update(
                jwt_algorithm="RS256", jwks_url="pending", jwt_issuer="pending", jwt_client_id="pending"
            )
        validated_settings(overrides, **placeholders)

        # Stateful resources keep their data unless told otherwise; retained
        # tables also keep point-in-time recovery and deletion protection.
        removal = REMOVAL_POLICIES[config.removal_policy]
        stage_name = config.api_stage_name

        self.tables = Tables(self, "Tables", removal_policy=removal)
        self.fanout = FanOut(
            self,
            "FanOut",
            bus_name=config.event_bus_name,
            archive_retention_days=config.event_archive_retention_days,
        )
        self.websocket = WebSocketApi(
            self, "WebSocket", stage_name=stage_name, api_name=config.physical_name("websocket").lower()
        )
        self.cognito = (
            CognitoIdentity(
                self,
                "Cognito",
                callback_urls=list(config.cognito_callback_urls),
                logout_urls=list(config.cognito_logout_urls),
                domain_prefix=config.cognito_domain_prefix,
                removal_policy=removal,
            )
            if config.cognito
            else None
        )
        if self.cognito is not None:
            verification = self.cognito.verification()
        elif jwks_url:
            verification = {"jwt_algorithm": "RS256", "jwks_url": jwks_url}
        else:
            verification = {}
        self.token_key = TokenKey(
            self,
            "TokenKey",
            verification=verification,
            jwt_secret_arn=config.jwt_secret_arn,
            jwt_secret_kms_key_arn=config.jwt_secret_kms_key_arn,
            removal_policy=removal,
        )
        self.functions = Functions(
            self,
            "Functions",
            tables=self.tables,
            fanout=self.fanout,
            token_key=self.token_key,
            settings_overrides=overrides,
            websocket_api_id=self.websocket.api_id,
            stage_name=stage_name,
            deps_layer=deps_layer,
            log_retention_days=config.log_retention_days,
            removal_policy=removal,
        )
        functions = self.functions.functions

        self.websocket.add_routes(
            dict(functions),
            authorizer_function=functions[topology.AUTHORIZER.name],
            throttle_rate_limit=config.throttle_rate_limit,
            throttle_burst_limit=config.throttle_burst_limit,
            log_retention_days=config.log_retention_days,
            removal_policy=removal,
            account_logging_role=config.apigw_account_logging_role,
            domain_name=config.domain_name,
            certificate_arn=config.certificate_arn,
        )
        self.fanout.connect_consumers(functions)
        self.sweeper = Sweeper(self, "Sweeper", sweeper_function=functions[topology.SWEEPER.name])
        self.admin = AdminApi(
            self,
            "Admin",
            admin_function=functions[topology.ADMIN.name],
            api_name=config.physical_name("admin").lower(),
            log_retention_days=config.log_retention_days,
            removal_policy=removal,
        )
        self.monitoring = Monitoring(
            self,
            "Monitoring",
            functions=functions,
            source_queues={declared.logical_id: self.fanout.queue(declared) for declared in topology.QUEUES},
            dead_letter_queues={
                **{declared.dlq_logical_id: self.fanout.dead_letter_queue(declared) for declared in topology.QUEUES},
                "EventDeliveryDlq": self.fanout.event_delivery_dlq,
            },
            websocket_api_id=self.websocket.api_id,
            stage_name=stage_name,
            tables={declared.logical_id: table for declared, table in self.tables.items()},
            physical_name=config.physical_name,
            stage=config.stage,
            delivery_lag_threshold_ms=config.delivery_lag_threshold_ms,
            queue_age_threshold_seconds=config.queue_age_threshold_seconds,
            alarm_email=config.alarm_email,
            removal_policy=removal,
        )

        CfnOutput(self, "WebSocketUrl", value=self.websocket.url, description="Clients connect here (wss://)")
        CfnOutput(
            self,
            "ManagementApiEndpoint",
            value=self.websocket.management_endpoint(),
            description="API Gateway Management API endpoint for posting to connections",
        )
        CfnOutput(self, "EventBusName", value=self.fanout.bus.event_bus_name, description="Upstream PutEvents target")
        CfnOutput(self, "AdminApiUrl", value=self.admin.url, description="IAM-authorised admin API")
        self._token_outputs()
        if self.websocket.domain is not None:
            CfnOutput(
                self,
                "CustomDomainTarget",
                value=self.websocket.domain.regional_domain_name,
                description="Point the custom domain's DNS (CNAME/alias) here",
            )

    def _token_outputs(self) -> None:
        """Where a token issuer finds the HS256 key, or the Cognito pool's identifiers."""
        if self.token_key.secret is not None:
            CfnOutput(
                self,
                "JwtSecretArn",
                value=self.token_key.secret.secret_arn,
                description="Secrets Manager secret whose value signs HS256 access tokens "
                "(python -m local token --stack NAME mints a test token with it)",
            )
        if self.cognito is None:
            return
        CfnOutput(self, "UserPoolId", value=self.cognito.user_pool.user_pool_id, description="Cognito user pool")
        CfnOutput(
            self,
            "UserPoolClientId",
            value=self.cognito.client.user_pool_client_id,
            description="App client whose access tokens the WebSocket API accepts (client_id)",
        )
        CfnOutput(self, "CognitoIssuer", value=self.cognito.issuer, description="iss of the pool's tokens")
        CfnOutput(self, "CognitoJwksUrl", value=self.cognito.jwks_url, description="The pool's signing keys")
        CfnOutput(
            self,
            "CognitoResourceServer",
            value=RESOURCE_SERVER_ID,
            description="Resource server identifier: scopes are <identifier>/<permission>",
        )
        if self.cognito.domain is not None:
            CfnOutput(
                self,
                "CognitoDomainUrl",
                value=self.cognito.domain.base_url(),
                description="Managed login and OAuth endpoints (/oauth2/authorize, /oauth2/token)",
            )

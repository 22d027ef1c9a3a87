"""The operators' HTTP API: read-only views of connections, subscriptions, rooms and stats.

IAM-authorised: a caller signs with SigV4 and needs `execute-api:Invoke` on
these routes, so access is managed with the same IAM policies as the rest of
the account, and nothing here issues or checks tokens of its own.
"""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_apigatewayv2_authorizers as authorizers
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from infra.logs import retained_log_group
from infra.websocket_api import JsonAccessLogs
from quanttrade_ws import topology

HTTP_ACCESS_LOG_FORMAT = {
    "requestId": "$context.requestId",
    "requestTime": "$context.requestTimeEpoch",
    "routeKey": "$context.routeKey",
    "status": "$context.status",
    "caller": "$context.identity.caller",
    "userArn": "$context.identity.userArn",
    "sourceIp": "$context.identity.sourceIp",
    "integrationStatus": "$context.integrationStatus",
    "integrationLatency": "$context.integrationLatency",
    "error": "$context.error.message",
    "authorizerError": "$context.authorizer.error",
}

# Operators poll, they do not stream: a low ceiling keeps a runaway script
# from competing with the WebSocket API for the account's request quota.
ADMIN_RATE_LIMIT = 20
ADMIN_BURST_LIMIT = 40


class AdminApi(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        admin_function: lambda_.IFunction,
        api_name: str,
        log_retention_days: int,
        removal_policy: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id)
        self.api = apigwv2.HttpApi(
            self,
            "Api",
            api_name=api_name,
            description="QuantTrade operators' read-only API (IAM-authorised)",
            # The default stage is created below, with access logs and throttling.
            create_default_stage=False,
        )
        integration = integrations.HttpLambdaIntegration("AdminIntegration", admin_function)
        authorizer = authorizers.HttpIamAuthorizer()
        self.routes: dict[str, apigwv2.HttpRoute] = {}
        for route in topology.ADMIN_ROUTES:
            method, path = route.split(" ", 1)
            (created,) = self.api.add_routes(
                path=path, methods=[apigwv2.HttpMethod(method)], integration=integration, authorizer=authorizer
            )
            self.routes[route] = created

        access_logs = retained_log_group(self, "AccessLogs", days=log_retention_days, removal_policy=removal_policy)
        self.stage = apigwv2.HttpStage(
            self,
            "Stage",
            http_api=self.api,
            stage_name="$default",
            auto_deploy=True,
            throttle=apigwv2.ThrottleSettings(rate_limit=ADMIN_RATE_LIMIT, burst_limit=ADMIN_BURST_LIMIT),
            access_log_settings=JsonAccessLogs(access_logs, HTTP_ACCESS_LOG_FORMAT),
        )
        self.access_logs = access_logs

    @property
    def url(self) -> str:
        return self.stage.url

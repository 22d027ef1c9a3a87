"""The client-facing WebSocket API: routes from `topology.ROUTES`, the token authorizer, the stage.

Two steps, like the fan-out: the API exists first so its id can go into the
functions' management endpoint and IAM scope; `add_routes` wires the routes and
creates the stage once the functions exist.
"""

from __future__ import annotations

import json

import jsii
from aws_cdk import RemovalPolicy
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_apigatewayv2_authorizers as authorizers
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from cdk_nag import NagSuppressions
from constructs import Construct

from infra.logs import retained_log_group
from quanttrade_ws import topology

# One JSON object per line, so Logs Insights can filter on any field.
WEBSOCKET_ACCESS_LOG_FORMAT = {
    "requestId": "$context.requestId",
    "extendedRequestId": "$context.extendedRequestId",
    "requestTime": "$context.requestTimeEpoch",
    "connectionId": "$context.connectionId",
    "eventType": "$context.eventType",
    "routeKey": "$context.routeKey",
    "status": "$context.status",
    "sourceIp": "$context.identity.sourceIp",
    "userAgent": "$context.identity.userAgent",
    "principalId": "$context.authorizer.principalId",
    "authorizerError": "$context.authorizer.error",
    "authorizeStatus": "$context.authorize.status",
    "authorizeLatency": "$context.authorize.latency",
    "integrationStatus": "$context.integration.status",
    "integrationError": "$context.integration.error",
    "integrationLatency": "$context.integration.latency",
    "error": "$context.error.message",
}


@jsii.implements(apigwv2.IAccessLogSettings)
class JsonAccessLogs:
    def __init__(self, log_group: logs.ILogGroup, fields: dict[str, str]) -> None:
        self._destination = apigwv2.LogGroupLogDestination(log_group)
        self._format = apigw.AccessLogFormat.custom(json.dumps(fields, separators=(",", ":")))

    @property
    def destination(self) -> apigwv2.IAccessLogDestination:
        return self._destination

    @property
    def format(self) -> apigw.AccessLogFormat:
        return self._format


class WebSocketApi(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, stage_name: str, api_name: str) -> None:
        super().__init__(scope, construct_id)
        self.stage_name = stage_name
        self.api = apigwv2.WebSocketApi(
            self,
            "Api",
            api_name=api_name,
            description="QuantTrade real-time streams for dashboards, apps and trading bots",
            route_selection_expression=topology.ROUTE_SELECTION_EXPRESSION,
        )
        self.routes: dict[str, apigwv2.WebSocketRoute] = {}
        self.stage: apigwv2.WebSocketStage | None = None
        self.domain: apigwv2.DomainName | None = None
        self.domain_name: str | None = None

    @property
    def api_id(self) -> str:
        return self.api.api_id

    def add_routes(
        self,
        functions: dict[str, lambda_.IFunction],
        *,
        authorizer_function: lambda_.IFunction,
        throttle_rate_limit: float,
        throttle_burst_limit: int,
        log_retention_days: int,
        removal_policy: RemovalPolicy,
        account_logging_role: bool,
        domain_name: str | None = None,
        certificate_arn: str | None = None,
    ) -> apigwv2.WebSocketStage:
        # API Gateway authorizes the WebSocket handshake only: an authorizer is
        # allowed on $connect and nowhere else, and the connection it admits
        # keeps its identity for every later frame.
        authorizer = authorizers.WebSocketLambdaAuthorizer(
            "TokenAuthorizer",
            authorizer_function,
            authorizer_name="quanttrade-token",
            identity_source=[topology.AUTHORIZER_IDENTITY_SOURCE],
        )
        # One integration per function, shared by its routes: the message
        # function serves $default and every action through a single integration.
        integrations_by_function: dict[str, integrations.WebSocketLambdaIntegration] = {}
        for route_key, declared in topology.ROUTES.items():
            integration = integrations_by_function.get(declared.name)
            if integration is None:
                integration = integrations.WebSocketLambdaIntegration(
                    f"{declared.name.title()}Integration", functions[declared.name]
                )
                integrations_by_function[declared.name] = integration
            route = self.api.add_route(
                route_key,
                integration=integration,
                authorizer=authorizer if route_key == "$connect" else None,
            )
            if route_key != "$connect":
                NagSuppressions.add_resource_suppressions(
                    route,
                    [
                        {
                            "id": "AwsSolutions-APIG4",
                            "reason": "API Gateway WebSocket APIs accept an authorizer on $connect only; this "
                            "route runs on a connection the $connect authorizer already admitted, and the "
                            "handler acts on that connection's stored identity.",
                        }
                    ],
                    apply_to_children=True,
                )
            self.routes[route_key] = route

        access_logs = retained_log_group(self, "AccessLogs", days=log_retention_days, removal_policy=removal_policy)
        domain_mapping = None
        if domain_name and certificate_arn:
            self.domain = apigwv2.DomainName(
                self,
                "Domain",
                domain_name=domain_name,
                certificate=acm.Certificate.from_certificate_arn(self, "Certificate", certificate_arn),
                security_policy=apigwv2.SecurityPolicy.TLS_1_2,
            )
            self.domain_name = domain_name
            domain_mapping = apigwv2.DomainMappingOptions(domain_name=self.domain)
        self.stage = apigwv2.WebSocketStage(
            self,
            "Stage",
            web_socket_api=self.api,
            stage_name=self.stage_name,
            auto_deploy=True,
            description="QuantTrade WebSocket stage",
            # The default route throttle caps what any one route can take from
            # the account-wide API Gateway quota shared with other APIs.
            throttle=apigwv2.ThrottleSettings(rate_limit=throttle_rate_limit, burst_limit=throttle_burst_limit),
            access_log_settings=JsonAccessLogs(access_logs, WEBSOCKET_ACCESS_LOG_FORMAT),
            domain_mapping=domain_mapping,
        )
        if domain_mapping is not None:
            # aws-cdk-lib makes the stage's API mapping DependsOn the domain as well
            # as Ref it; cfn-lint calls the DependsOn redundant (W3005). Silenced
            # on the mapping only.
            for child in self.stage.node.find_all():
                if isinstance(child, apigwv2.CfnApiMapping):
                    child.add_metadata("cfn-lint", {"config": {"ignore_checks": ["W3005"]}})
        if account_logging_role:
            self.stage.node.add_dependency(self._account_logging_role())
        self.access_logs = access_logs
        return self.stage

    def _account_logging_role(self) -> apigw.CfnAccount:
        # WebSocket stages write access logs through the API Gateway account's
        # CloudWatch role (HTTP APIs do not need it). The setting is per
        # account and region and shared with every REST and WebSocket API there.
        role = iam.Role(
            self,
            "AccountLoggingRole",
            assumed_by=iam.ServicePrincipal("apigateway.amazonaws.com"),
            description="API Gateway account-wide role for pushing API logs to CloudWatch",
            managed_policies=[
                iam.ManagedPolicy.from_aws_managed_policy_name("service-role/AmazonAPIGatewayPushToCloudWatchLogs")
            ],
        )
        # Other APIs in the account may rely on this role once it is set;
        # deleting this stack must not take their logging with it.
        role.apply_removal_policy(RemovalPolicy.RETAIN)
        NagSuppressions.add_resource_suppressions(
            role,
            [
                {
                    "id": "AwsSolutions-IAM4",
                    "reason": "The API Gateway account logging role serves every REST and WebSocket API in the "
                    "account and region, including log groups this stack does not know, so it cannot be scoped "
                    "to ours; AmazonAPIGatewayPushToCloudWatchLogs is the AWS-maintained policy for exactly this.",
                    "appliesTo": [
                        "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs"
                    ],
                }
            ],
        )
        account = apigw.CfnAccount(self, "Account", cloud_watch_role_arn=role.role_arn)
        account.apply_removal_policy(RemovalPolicy.RETAIN)
        return account

    @property
    def url(self) -> str:
        if self.domain_name is not None:
            return f"wss://{self.domain_name}"
        assert self.stage is not None
        return self.stage.url

    def management_endpoint(self) -> str:
        assert self.stage is not None
        return self.stage.callback_url

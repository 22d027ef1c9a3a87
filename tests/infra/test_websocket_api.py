"""The client-facing WebSocket API and the operators' admin API."""

from __future__ import annotations

import json

from quanttrade_ws import topology
from tests.infra.conftest import Synth


def _api_id(synth: Synth, protocol: str) -> str:
    (api_id,) = [
        logical_id
        for logical_id, api in synth.resources("AWS::ApiGatewayV2::Api").items()
        if api["Properties"]["ProtocolType"] == protocol
    ]
    return api_id


def _routes(synth: Synth, protocol: str) -> dict[str, dict]:
    api_id = _api_id(synth, protocol)
    return {
        route["Properties"]["RouteKey"]: route["Properties"]
        for route in synth.resources("AWS::ApiGatewayV2::Route").values()
        if route["Properties"]["ApiId"] == {"Ref": api_id}
    }


def _integration_function(synth: Synth, route: dict) -> str:
    """The logical id of the function behind a route's integration."""
    target = json.dumps(route["Target"])
    integrations = synth.resources("AWS::ApiGatewayV2::Integration")
    (integration,) = [props["Properties"] for logical_id, props in integrations.items() if logical_id in target]
    uri = json.dumps(integration["IntegrationUri"])
    functions = synth.resources("AWS::Lambda::Function")
    (function_id,) = [logical_id for logical_id in functions if logical_id in uri]
    return function_id


def test_websocket_api_selects_routes_by_action(synth: Synth) -> None:
    # GIVEN the synthesised template / WHEN the WebSocket API is read
    api = synth.resources("AWS::ApiGatewayV2::Api")[_api_id(synth, "WEBSOCKET")]["Properties"]
    # THEN its route selection expression is the topology's
    assert api["RouteSelectionExpression"] == topology.ROUTE_SELECTION_EXPRESSION


def test_every_declared_route_exists_and_integrates_its_function(synth: Synth) -> None:
    routes = _routes(synth, "WEBSOCKET")
    assert set(routes) == set(topology.ROUTES)
    assert {"$connect", "$disconnect", "$default", *topology.ACTIONS} == set(routes)
    for route_key, declared in topology.ROUTES.items():
        assert _integration_function(synth, routes[route_key]) == synth.function_id(declared), route_key


def test_integrations_are_lambda_proxy(synth: Synth) -> None:
    for integration in synth.resources("AWS::ApiGatewayV2::Integration").values():
        assert integration["Properties"]["IntegrationType"] == "AWS_PROXY"


def test_authorizer_guards_connect_and_nothing_else(synth: Synth) -> None:
    routes = _routes(synth, "WEBSOCKET")
    (authorizer_id, authorizer), *others = synth.resources("AWS::ApiGatewayV2::Authorizer").items()
    assert not others
    props = authorizer["Properties"]
    assert props["AuthorizerType"] == "REQUEST"
    assert props["IdentitySource"] == [topology.AUTHORIZER_IDENTITY_SOURCE]
    assert synth.function_id(topology.AUTHORIZER) in json.dumps(props["AuthorizerUri"])

    assert routes["$connect"]["AuthorizationType"] == "CUSTOM"
    assert routes["$connect"]["AuthorizerId"] == {"Ref": authorizer_id}
    for route_key, route in routes.items():
        if route_key != "$connect":
            assert route.get("AuthorizationType", "NONE") == "NONE", route_key
            assert "AuthorizerId" not in route, route_key


def test_stage_deploys_automatically_with_throttling_and_json_access_logs(synth: Synth) -> None:
    api_id = _api_id(synth, "WEBSOCKET")
    (stage,) = [
        s["Properties"]
        for s in synth.resources("AWS::ApiGatewayV2::Stage").values()
        if s["Properties"]["ApiId"] == {"Ref": api_id}
    ]
    assert stage["StageName"] == "prod"
    assert stage["AutoDeploy"] is True
    assert stage["DefaultRouteSettings"]["ThrottlingRateLimit"] > 0
    assert stage["DefaultRouteSettings"]["ThrottlingBurstLimit"] > 0
    log_fields = json.loads(stage["AccessLogSettings"]["Format"])
    assert log_fields["requestId"] == "$context.requestId"
    assert log_fields["connectionId"] == "$context.connectionId"
    assert "Fn::GetAtt" in stage["AccessLogSettings"]["DestinationArn"]


def test_websocket_access_logging_has_the_account_cloudwatch_role(synth: Synth) -> None:
    # WebSocket stages cannot write access logs until API Gateway's account role exists.
    (account,) = synth.resources("AWS::ApiGateway::Account").values()
    assert "CloudWatchRoleArn" in account["Properties"]


def test_admin_routes_are_iam_authorised_and_reach_the_admin_function(synth: Synth) -> None:
    routes = _routes(synth, "HTTP")
    assert set(routes) == set(topology.ADMIN_ROUTES)
    for route_key, route in routes.items():
        assert route["AuthorizationType"] == "AWS_IAM", route_key
        assert _integration_function(synth, route) == synth.function_id(topology.ADMIN), route_key


def test_admin_stage_logs_and_throttles(synth: Synth) -> None:
    api_id = _api_id(synth, "HTTP")
    (stage,) = [
        s["Properties"]
        for s in synth.resources("AWS::ApiGatewayV2::Stage").values()
        if s["Properties"]["ApiId"] == {"Ref": api_id}
    ]
    assert stage["AutoDeploy"] is True
    assert json.loads(stage["AccessLogSettings"]["Format"])["requestId"] == "$context.requestId"
    assert stage["DefaultRouteSettings"]["ThrottlingRateLimit"] > 0


def test_outputs_name_the_endpoints(synth: Synth) -> None:
    outputs = synth.json["Outputs"]
    for name in ("WebSocketUrl", "ManagementApiEndpoint", "EventBusName", "AdminApiUrl"):
        assert name in outputs, name
    assert json.dumps(outputs["WebSocketUrl"]["Value"]).startswith('{"Fn::Join": ["", ["wss://"')
    assert json.dumps(outputs["ManagementApiEndpoint"]["Value"]).startswith('{"Fn::Join": ["", ["https://"')

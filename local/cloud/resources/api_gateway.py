"""API Gateway v2 APIs (WebSocket and HTTP): their routes, integrations' functions, authorizers and stages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from local.cloud.resources.resource import (
    AUTHORIZER,
    FUNCTION,
    INTEGRATION,
    ROUTE,
    STAGE,
    Resource,
    TemplateError,
    first_ref,
    referenced_ids,
)

if TYPE_CHECKING:
    from local.cloud.template import Template


@dataclass(frozen=True)
class ApiRoute:
    logical_id: str
    route_key: str
    authorization_type: str
    authorizer_logical_id: str | None
    integration_logical_id: str
    function_logical_id: str


@dataclass(frozen=True)
class ApiAuthorizer:
    logical_id: str
    name: str
    authorizer_type: str
    function_logical_id: str
    identity_source: tuple[str, ...]


@dataclass(frozen=True)
class Api:
    logical_id: str
    name: str
    protocol: str  # WEBSOCKET | HTTP
    route_selection_expression: str | None
    routes: dict[str, ApiRoute]  # by route key
    authorizers: dict[str, ApiAuthorizer]  # by logical id
    stage_names: tuple[str, ...]

    @property
    def stage_name(self) -> str:
        if len(self.stage_names) != 1:
            raise TemplateError(f"API {self.logical_id} has stages {list(self.stage_names)}, not exactly one")
        return self.stage_names[0]

    def authorizer_of(self, route_key: str) -> ApiAuthorizer | None:
        route = self.routes[route_key]
        return self.authorizers[route.authorizer_logical_id] if route.authorizer_logical_id else None


def read_api(template: Template, api: Resource) -> Api:
    """The API with the routes, authorizers and stages whose ApiId points at it."""

    def belongs(r: Resource) -> bool:
        return api.logical_id in referenced_ids(r.properties.get("ApiId"))

    authorizers = {
        a.logical_id: ApiAuthorizer(
            logical_id=a.logical_id,
            name=a.properties.get("Name", a.logical_id),
            authorizer_type=a.properties["AuthorizerType"],
            function_logical_id=template.one_of_type(
                a.properties.get("AuthorizerUri"), FUNCTION, f"authorizer {a.logical_id}"
            ),
            identity_source=tuple(a.properties.get("IdentitySource", ())),
        )
        for a in template.of_type(AUTHORIZER)
        if belongs(a)
    }
    routes = {}
    for route in (r for r in template.of_type(ROUTE) if belongs(r)):
        p = route.properties
        integration_id = template.one_of_type(p.get("Target"), INTEGRATION, f"target of route {route.logical_id}")
        integration = template.resources[integration_id]
        routes[p["RouteKey"]] = ApiRoute(
            logical_id=route.logical_id,
            route_key=p["RouteKey"],
            authorization_type=p.get("AuthorizationType", "NONE"),
            authorizer_logical_id=first_ref(p["AuthorizerId"]) if "AuthorizerId" in p else None,
            integration_logical_id=integration_id,
            function_logical_id=template.one_of_type(
                integration.properties.get("IntegrationUri"), FUNCTION, f"integration {integration_id}"
            ),
        )
    return Api(
        logical_id=api.logical_id,
        name=api.properties.get("Name", api.logical_id),
        protocol=api.properties["ProtocolType"],
        route_selection_expression=api.properties.get("RouteSelectionExpression"),
        routes=routes,
        authorizers=authorizers,
        stage_names=tuple(s.properties["StageName"] for s in template.of_type(STAGE) if belongs(s)),
    )

"""Admin HTTP API (IAM-authorised): connection info, room members, subscriptions, statistics.

Powertools' router dispatches on the request's method and path: a request no route
matches gets the router's 404. The only other 404 is a query's `NotFound` (no such
connection, no such room); any other exception is a bug and fails the invocation.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types

from quanttrade_ws.admin import AdminQueries, NotFound
from quanttrade_ws.observability import logger
from quanttrade_ws.runtime import runtime

app = APIGatewayHttpResolver()


def _queries() -> AdminQueries:
    return AdminQueries(runtime().store)


def _path_parameter(name: str) -> str:
    # API Gateway's decoded value: the router matches the raw path, where a connection id's
    # `=` or a room's `:` may arrive percent-encoded.
    return str(app.current_event.path_parameters[name])


@app.get("/connections/<connection_id>")
def connection(connection_id: str) -> dict[str, Any]:
    return _queries().connection(_path_parameter("connection_id"))


@app.get("/connections/<connection_id>/subscriptions")
def subscriptions(connection_id: str) -> dict[str, Any]:
    return _queries().subscriptions(_path_parameter("connection_id"))


@app.get("/rooms/<room>/members")
def room_members(room: str) -> dict[str, Any]:
    return _queries().room_members(_path_parameter("room"))


@app.get("/stats")
def stats() -> dict[str, Any]:
    return _queries().stats()


@app.exception_handler(NotFound)
def not_found(error: NotFound) -> Response[dict[str, str]]:
    return Response(status_code=404, content_type=content_types.APPLICATION_JSON, body={"message": str(error)})


@logger.inject_lambda_context(log_event=False)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return app.resolve(event, context)

"""API Gateway's error answers: handshake refusals and Management API errors, in its own shapes."""

from __future__ import annotations

import json

from aiohttp import web

from local.api_gateway.lambda_events import new_id

JSON = "application/json"


class Refusal(Exception):
    """A handshake API Gateway answers with an HTTP error instead of an upgrade."""

    def __init__(self, status: int, message: str | None, error_type: str | None = None, body: str | None = None):
        super().__init__(status)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.body = body

    def response(self) -> web.Response:
        headers = {"x-amzn-RequestId": new_id()}
        if self.error_type:
            headers["x-amzn-ErrorType"] = self.error_type
        if self.body is not None:
            return web.Response(status=self.status, text=self.body, headers=headers)
        return web.Response(
            status=self.status, body=json.dumps({"message": self.message}), content_type=JSON, headers=headers
        )


def management_error(status: int, error_type: str, message: str | None) -> web.Response:
    # botocore takes the error code from x-amzn-ErrorType, so `client.exceptions.<Type>` is raised.
    return web.Response(
        status=status,
        body=json.dumps({"message": message}).encode(),
        content_type=JSON,
        headers={"x-amzn-ErrorType": error_type, "x-amzn-RequestId": new_id()},
    )


def gone() -> web.Response:
    return management_error(410, "GoneException", None)

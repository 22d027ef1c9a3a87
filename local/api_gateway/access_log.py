"""The stage's access logs, without secrets: API Gateway's CLF lines per route, aiohttp's per HTTP request.

`token` query values never reach a log: not the access log's request lines,
nor aiohttp's server log, whose errors quote the request line they could not parse.
"""

from __future__ import annotations

import logging
import re
import time
from urllib.parse import unquote_plus

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from local.api_gateway.connection import Connection
from local.api_gateway.lambda_events import request_time

access_logger = logging.getLogger("quanttrade.local.gateway.access")
server_logger = logging.getLogger("quanttrade.local.gateway.server")

_SECRET_NAMES = frozenset({"token", "access_token", "id_token"})
# In free text (an exception naming the request line): a token parameter, its name possibly percent-encoded.
_SECRET_IN_TEXT = re.compile(r"(?i)((?:access_|id_)?t(?:o|%6f)(?:k|%6b)(?:e|%65)(?:n|%6e)(?:=|%3d))[^&\s'\"\\]*")


def log_route(
    connection: Connection,
    event_type: str,
    route_key: str,
    status: int,
    request_id: str,
    started: float | None = None,
) -> None:
    # API Gateway's CLF access log format for WebSocket APIs, plus the integration latency.
    if not access_logger.isEnabledFor(logging.INFO):
        return
    latency = f" {(time.monotonic() - started) * 1000:.1f}ms" if started is not None else ""
    access_logger.info(
        '%s - - [%s] "%s %s %s" %d %s%s',
        connection.source_ip,
        request_time(time.time()),
        event_type,
        route_key,
        connection.connection_id,
        status,
        request_id,
        latency,
    )


class HttpAccessLogger(AbstractAccessLogger):
    """HTTP access log without secrets: `token` query values never reach the log.

    Management API calls are logged at DEBUG only: AWS does not access-log them,
    and at thousands of posts a second the log would cost more than the posts.
    """

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: BaseRequest, response: StreamResponse, time_taken: float) -> None:
        path = request.path
        level = logging.DEBUG if "/@connections/" in path else logging.INFO
        if not self.logger.isEnabledFor(level):
            return
        query = request.query_string
        target = f"{path}?{redact_query(query)}" if query else path
        self.logger.log(
            level,
            '%s - - [%s] "%s %s" %d %s %.1fms',
            request.remote,
            request_time(time.time()),
            request.method,
            target,
            response.status,
            response.body_length,
            time_taken * 1000,
        )


def redact_query(query_string: str) -> str:
    """The query string with the value of every token parameter replaced.

    Names are compared decoded, as the authorizer reads them (`tok%65n=` is `token=`)."""
    parts = []
    for pair in query_string.split("&"):
        name, separator, _ = pair.partition("=")
        if separator and unquote_plus(name).lower() in _SECRET_NAMES:
            pair = f"{name}=REDACTED"
        parts.append(pair)
    return "&".join(parts)


class _WithoutSecrets(logging.Filter):
    """For aiohttp's server log: a request it could not parse (an over-long or malformed request line) is logged
    by its exception, whose text starts with the request line and so with any token in it. Only the exception's
    type is kept, and token values in the message are replaced."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = _SECRET_IN_TEXT.sub(r"\1REDACTED", record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            message = f"{message}: {type(record.exc_info[1]).__name__} (details withheld: they may carry a token)"
            record.exc_info = None
            record.exc_text = None
        record.msg, record.args = message, ()
        return True


server_logger.addFilter(_WithoutSecrets())

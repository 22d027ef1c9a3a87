"""Step 5: the request, unchanged, to moto; moto's answer back (whole when small, streamed when large)."""

from __future__ import annotations

import logging

import aiohttp
from aiohttp import web
from aiohttp.web_request import BaseRequest

logger = logging.getLogger("quanttrade.local.aws_endpoint")

_BUFFER_LIMIT = 1024 * 1024  # moto answers up to this size are relayed whole; bigger or unsized ones are streamed
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "proxy-connection", "te"}
)


async def forward(
    session: aiohttp.ClientSession, upstream_url: str, request: BaseRequest, body: bytes
) -> web.StreamResponse:
    """Send `request` (whose body was read as `body`) to moto at `upstream_url`; moto's answer."""
    headers = [(name, value) for name, value in request.headers.items() if name.lower() not in _HOP_BY_HOP]
    try:
        upstream = await session.request(
            request.method,
            upstream_url + request.raw_path,
            data=body,
            headers=headers,
            allow_redirects=False,
            skip_auto_headers=("Content-Type", "Accept-Encoding", "User-Agent", "Accept"),
        )
    except aiohttp.ClientError as error:
        logger.error("moto did not answer: %s", error)
        return web.Response(status=502, text=f"moto did not answer: {error}")
    try:
        length = upstream.content_length
        if length is not None and length <= _BUFFER_LIMIT:
            # Small answers (nearly all of moto's) go back in one write: headers and body written apart
            # doubled the door's added latency (measured with bench.front_door: 5-6 ms against 3 ms at p50).
            buffered = web.Response(status=upstream.status, reason=upstream.reason, body=await upstream.read())
            _copy_headers(upstream, buffered)
            return buffered
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        _copy_headers(upstream, response)
        if length is not None:
            response.content_length = length
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        upstream.release()


def _copy_headers(upstream: aiohttp.ClientResponse, response: web.StreamResponse) -> None:
    for name, value in upstream.headers.items():
        if name.lower() not in _HOP_BY_HOP:
            response.headers.add(name, value)

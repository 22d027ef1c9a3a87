"""SigV4 and IAM on the local gateway's own HTTP surfaces, answered the way API Gateway answers.

Two surfaces are IAM-authorised on AWS and so are here:

* the WebSocket API's Management API (`@connections`): `execute-api:ManageConnections`
  on `arn:aws:execute-api:<region>:<account>:<api>/<stage>/<METHOD>/@connections/<id>`
  (checked by `local.api_gateway.management_api`);
* the admin HTTP API (`/admin/...`, and the local-only `/local/stats`):
  `execute-api:Invoke` on `arn:aws:execute-api:<region>:<account>:<api>/<stage>/<METHOD><path>`
  (`require_invoke`, applied to those routes by `local.stack.http_routes`).

Callers sign with the credentials of a principal in the shared `Principals`
registry: the local administrator's development keys for the CLI, tests and
scripts (`signed_request`), a function's role keys for the functions.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from aiohttp import web
from aiohttp.web_request import BaseRequest

from local.iam import Decision
from local.principals import ADMIN_CREDENTIALS, Principal, Principals
from local.sigv4 import Credentials, Failure, SignatureError, sign_headers, verify

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PRINCIPAL_KEY = web.RequestKey("iam_principal", Principal)  # where require_invoke leaves the verified caller

# API Gateway answers every refused signature with 403; the error type tells which check failed.
_SIGNATURE_ERROR_TYPES = {
    Failure.MISSING: "ForbiddenException",
    Failure.INCOMPLETE: "IncompleteSignatureException",
    Failure.UNKNOWN_KEY: "UnrecognizedClientException",
    Failure.EXPIRED: "InvalidSignatureException",
    Failure.WRONG_SCOPE: "InvalidSignatureException",
    Failure.BAD_SIGNATURE: "InvalidSignatureException",
}
_MISSING_TOKEN = "Missing Authentication Token"


def authenticate(
    request: BaseRequest, body: bytes, principals: Principals, *, region: str, service: str = "execute-api"
) -> Principal:
    """The principal whose SigV4 signature (for `service`) the request carries; SignatureError if none."""
    return authenticate_parts(
        request.method, request.raw_path, request.headers.items(), body, principals, region=region, service=service
    )


def authenticate_parts(
    method: str,
    raw_path: str,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    principals: Principals,
    *,
    region: str,
    service: str = "execute-api",
) -> Principal:
    """`authenticate` for a request as received by a server other than aiohttp's: its target as sent, its headers."""
    # As sent on the wire: aiohttp's `query_string` is decoded, and SigV4 canonicalises the encoded form.
    path, _, query = raw_path.partition("?")
    signed = verify(
        method=method,
        path=path,
        query=query,
        headers=headers,
        body=body,
        lookup=principals.credentials,
        service=service,
        region=region,
    )
    principal = principals.get(signed.access_key_id)
    if principal is None:  # unregistered between lookup and now: refuse as unknown
        raise SignatureError(Failure.UNKNOWN_KEY, "The security token included in the request is invalid.")
    return principal


def request_context(remote: str | None, region: str, principal: Principal) -> dict[str, str]:
    """The global condition keys API Gateway supplies to IAM for a request from the address `remote`."""
    return {
        **principal.condition_keys(),
        "aws:RequestedRegion": region,
        "aws:SecureTransport": "false",
        "aws:SourceIp": remote or "127.0.0.1",
    }


def signature_refusal(error: SignatureError) -> web.Response:
    message = _MISSING_TOKEN if error.failure is Failure.MISSING else error.message
    return _forbidden(_SIGNATURE_ERROR_TYPES[error.failure], {"message": message})


def access_denied(principal: Principal, action: str, resource: str, decision: Decision) -> web.Response:
    # API Gateway's IAM denial: 403 AccessDeniedException, the reason under "Message".
    return _forbidden("AccessDeniedException", {"Message": principal.denial_message(action, resource, decision)})


def _forbidden(error_type: str, document: Mapping[str, str]) -> web.Response:
    return web.Response(
        status=403,
        body=json.dumps(document).encode(),
        content_type="application/json",
        headers={"x-amzn-ErrorType": error_type, "x-amzn-RequestId": os.urandom(8).hex()},
    )


def require_invoke(
    principals: Principals,
    *,
    region: str,
    account: str,
    api_id: str,
    stage: str = "$default",
    strip_prefix: str = "",
) -> Callable[[Handler], Handler]:
    """Decorate an aiohttp handler so it runs only for a SigV4-signed caller allowed `execute-api:Invoke`.

    The resource is the route's execute-api ARN; `strip_prefix` removes the
    local mount point (`/admin`) that the deployed API does not have.
    """

    def decorate(handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            try:
                principal = authenticate(request, body, principals, region=region)
            except SignatureError as error:
                return signature_refusal(error)
            path = request.path.removeprefix(strip_prefix) if strip_prefix else request.path
            resource = f"arn:aws:execute-api:{region}:{account}:{api_id}/{stage}/{request.method}{path or '/'}"
            decision = principal.decide(
                "execute-api:Invoke", resource, request_context(request.remote, region, principal)
            )
            if decision is not Decision.ALLOW:
                return access_denied(principal, "execute-api:Invoke", resource, decision)
            request[PRINCIPAL_KEY] = principal
            return await handler(request)

        guarded.__name__ = getattr(handler, "__name__", "guarded")
        guarded.__doc__ = handler.__doc__
        return guarded

    return decorate


def signed_request(
    method: str,
    url: str,
    credentials: Credentials = ADMIN_CREDENTIALS,
    *,
    region: str,
    service: str = "execute-api",
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
) -> urllib.request.Request:
    """A urllib request signed with SigV4; by default as the local administrator (the CLI, tests, scripts)."""
    wanted: dict[str, Any] = {"Accept": "application/json", **(headers or {})}
    signed = sign_headers(method, url, credentials, service=service, region=region, body=body, headers=wanted)
    return urllib.request.Request(url, data=body or None, headers=signed, method=method)

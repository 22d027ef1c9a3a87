"""Verifying AWS Signature Version 4 on requests the local stack receives, as AWS front ends do.

The signature is recomputed with botocore's own signer (`SigV4Auth`), fed an
`AWSRequest` rebuilt from the request exactly as it arrived: the method, the
path as sent on the wire (still percent-encoded once; the signer encodes it
again, as SigV4 does for every service but S3), the raw query string, only the
headers the client listed in `SignedHeaders`, the body, and the client's own
`X-Amz-Date`. Whatever botocore would have computed for that request is then
compared with the client's signature in constant time.

What a request is rejected for, in AWS's order of checks:

* no `Authorization` header (MISSING),
* a malformed one, or no `X-Amz-Date`, or `host` not signed (INCOMPLETE),
* an access key nobody registered, or a session token that does not match the
  key's (UNKNOWN_KEY),
* a date more than 15 minutes from now (EXPIRED),
* a credential scope for another region or service (WRONG_SCOPE),
* a body that does not match a signed `X-Amz-Content-SHA256`, or any other
  difference in what was signed (BAD_SIGNATURE).

Each service turns a `SignatureError` into its own error shape (see
`local.aws_front_door` and the gateway's Management API); this module knows
nothing of protocols.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW_SECONDS = 15 * 60
_AMZ_DATE = "%Y%m%dT%H%M%SZ"
_AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+)\s*,\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+)\s*,\s*Signature=(?P<signature>[0-9a-f]{64})\s*$"
)


@dataclass(frozen=True)
class Credentials:
    """A secret the verifier recomputes signatures with. `session_token` set: requests must carry it."""

    access_key_id: str
    secret_key: str
    session_token: str | None = None


CredentialsLookup = Callable[[str], "Credentials | None"]


class Failure(enum.Enum):
    MISSING = "missing"
    INCOMPLETE = "incomplete"
    UNKNOWN_KEY = "unknown key"
    EXPIRED = "expired"
    WRONG_SCOPE = "wrong scope"
    BAD_SIGNATURE = "bad signature"


class SignatureError(Exception):
    """Why a request's signature was refused; `message` is the text AWS gives for it."""

    def __init__(self, failure: Failure, message: str) -> None:
        super().__init__(message)
        self.failure = failure
        self.message = message


@dataclass(frozen=True)
class SignedBy:
    """Who signed a request that verified, and for what."""

    access_key_id: str
    region: str
    service: str
    signed_at: datetime


BAD_SIGNATURE_MESSAGE = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
)
UNKNOWN_KEY_MESSAGE = "The security token included in the request is invalid."
MISSING_MESSAGE = "Request is missing Authentication Token"


def verify(
    *,
    method: str,
    path: str,
    query: str,
    headers: Iterable[tuple[str, str]] | Mapping[str, str],
    body: bytes,
    lookup: CredentialsLookup,
    service: str,
    region: str,
    now: float | None = None,
) -> SignedBy:
    """The signer of a request whose SigV4 signature holds for `service` in `region`; else SignatureError.

    `path` is the path as received (percent-encoded), `query` the raw query
    string without '?', `headers` every header received (repeats allowed).
    """
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    lowered: dict[str, list[str]] = {}
    for name, value in pairs:
        lowered.setdefault(name.lower(), []).append(value)
    authorization = _one(lowered, "authorization")
    if authorization is None:
        if "X-Amz-Signature=" in query or "X-Amz-Credential=" in query:
            # Presigned URLs are not something any caller of the local stack sends; refuse them plainly.
            raise SignatureError(Failure.INCOMPLETE, "Presigned requests are not accepted by the local stack.")
        raise SignatureError(Failure.MISSING, MISSING_MESSAGE)
    match = _AUTHORIZATION.match(authorization.strip())
    if match is None:
        raise SignatureError(
            Failure.INCOMPLETE,
            "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters "
            f"in the form '{ALGORITHM} Credential=..., SignedHeaders=..., Signature=...'.",
        )
    scope = match["credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        raise SignatureError(
            Failure.INCOMPLETE,
            "Credential should be scoped to a valid region, service and terminated by 'aws4_request'.",
        )
    access_key_id, scope_date, scope_region, scope_service, _ = scope
    signed_names = match["signed"].split(";")
    if "host" not in signed_names:
        raise SignatureError(Failure.INCOMPLETE, "'Host' must be a signed header.")
    amz_date = _one(lowered, "x-amz-date")
    if amz_date is None or "x-amz-date" not in signed_names:
        raise SignatureError(
            Failure.INCOMPLETE, "Authorization header requires existence of a signed 'X-Amz-Date' header."
        )

    credentials = lookup(access_key_id)
    if credentials is None:
        raise SignatureError(Failure.UNKNOWN_KEY, UNKNOWN_KEY_MESSAGE)
    token = _one(lowered, "x-amz-security-token")
    if credentials.session_token is not None and (
        token is None or not hmac.compare_digest(token.encode(), credentials.session_token.encode())
    ):
        raise SignatureError(Failure.UNKNOWN_KEY, UNKNOWN_KEY_MESSAGE)
    if credentials.session_token is None and token is not None:
        raise SignatureError(Failure.UNKNOWN_KEY, UNKNOWN_KEY_MESSAGE)

    missing = [name for name in signed_names if name not in lowered]
    if missing:
        raise SignatureError(Failure.BAD_SIGNATURE, BAD_SIGNATURE_MESSAGE)

    try:
        signed_at = datetime.strptime(amz_date, _AMZ_DATE).replace(tzinfo=UTC)
    except ValueError:
        raise SignatureError(
            Failure.INCOMPLETE, f"Date must be in ISO-8601 'basic format'. Got '{amz_date}'."
        ) from None
    current = time.time() if now is None else now
    skew = signed_at.timestamp() - current
    if abs(skew) > MAX_SKEW_SECONDS:
        server = datetime.fromtimestamp(current, UTC).strftime(_AMZ_DATE)
        if skew < 0:
            limit = datetime.fromtimestamp(current - MAX_SKEW_SECONDS, UTC).strftime(_AMZ_DATE)
            text = f"Signature expired: {amz_date} is now earlier than {limit} ({server} - 15 min.)"
        else:
            limit = datetime.fromtimestamp(current + MAX_SKEW_SECONDS, UTC).strftime(_AMZ_DATE)
            text = f"Signature not yet current: {amz_date} is still later than {limit} ({server} + 15 min.)"
        raise SignatureError(Failure.EXPIRED, text)
    if scope_date != amz_date[:8]:
        raise SignatureError(
            Failure.WRONG_SCOPE,
            f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
            f"'{scope_date}' != '{amz_date[:8]}', from '{amz_date}'.",
        )
    if scope_region != region:
        raise SignatureError(
            Failure.WRONG_SCOPE, f"Credential should be scoped to a valid region. (expected '{region}')"
        )
    if scope_service != service:
        raise SignatureError(Failure.WRONG_SCOPE, f"Credential should be scoped to correct service: '{service}'.")

    content_sha = _one(lowered, "x-amz-content-sha256")
    if content_sha is not None and not hmac.compare_digest(content_sha, hashlib.sha256(body).hexdigest()):
        # botocore puts this header's value in the canonical request instead of hashing the body, so a
        # body that does not match it must be caught here (UNSIGNED-PAYLOAD included: fail closed).
        raise SignatureError(Failure.BAD_SIGNATURE, BAD_SIGNATURE_MESSAGE)

    expected = _signature(
        method, path, query, pairs, set(signed_names), body, credentials, scope_region, service, amz_date
    )
    if not hmac.compare_digest(expected, match["signature"]):
        raise SignatureError(Failure.BAD_SIGNATURE, BAD_SIGNATURE_MESSAGE)
    return SignedBy(access_key_id, scope_region, service, signed_at)


def access_key_of(authorization: str | None) -> str | None:
    """The access key id an Authorization header claims (unverified), for routing before verification."""
    if not authorization:
        return None
    match = _AUTHORIZATION.match(authorization.strip())
    return match["credential"].split("/", 1)[0] if match else None


def scope_of(authorization: str | None) -> tuple[str, str] | None:
    """(region, service) an Authorization header claims (unverified)."""
    if not authorization:
        return None
    match = _AUTHORIZATION.match(authorization.strip())
    if match is None:
        return None
    parts = match["credential"].split("/")
    return (parts[2], parts[3]) if len(parts) == 5 else None


def sign_headers(
    method: str,
    url: str,
    credentials: Credentials,
    *,
    service: str,
    region: str,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Headers (Authorization, X-Amz-Date, ...) that sign a request the way boto3 would: for the CLI and tests."""
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    frozen = ReadOnlyCredentials(credentials.access_key_id, credentials.secret_key, credentials.session_token)
    signer = SigV4Auth(frozen, service, region)
    if credentials.session_token:
        request.headers["X-Amz-Security-Token"] = credentials.session_token
    signer.add_auth(request)
    return dict(request.headers.items())


def _one(headers: Mapping[str, list[str]], name: str) -> str | None:
    values = headers.get(name)
    return values[0] if values else None


def _signature(
    method: str,
    path: str,
    query: str,
    headers: list[tuple[str, str]],
    signed_names: set[str],
    body: bytes,
    credentials: Credentials,
    region: str,
    service: str,
    amz_date: str,
) -> str:
    host = next((value for name, value in headers if name.lower() == "host"), "localhost")
    url = f"http://{host}{path or '/'}" + (f"?{query}" if query else "")
    request = AWSRequest(method=method.upper(), url=url, data=body)
    for name, value in headers:
        if name.lower() in signed_names:
            request.headers[name] = value  # HTTPHeaders appends: repeated headers stay repeated
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(
        ReadOnlyCredentials(credentials.access_key_id, credentials.secret_key, credentials.session_token),
        service,
        region,
    )
    canonical_request = signer.canonical_request(request)
    return str(signer.signature(signer.string_to_sign(request, canonical_request), request))

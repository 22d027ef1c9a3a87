"""Verifying AWS Signature Version 4 on requests the local stack receives, as AWS front ends do.

The signature is recomputed from the request exactly as it arrived, following
the SigV4 specification for every service but S3: the method; the path as sent
on the wire (still percent-encoded once) with dot segments and repeated slashes
removed and then percent-encoded again; the query string with each name and
value decoded, encoded again with only `A-Za-z0-9-_.~` left bare and the pairs
sorted; the headers the client listed in `SignedHeaders`, lower-cased, sorted,
each value trimmed with inner runs of whitespace collapsed and repeats joined by
commas; the SHA-256 of the body; the client's own `X-Amz-Date`. The result is
compared with the client's signature in constant time. It is computed with
hashlib and hmac directly, deriving the signing key once per (secret, day,
region, service): every Management API post and every call a function makes to
AWS pays for it, so it must be cheap. botocore's `SigV4Auth` is the reference
the tests hold it to, request by request.

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
nothing of protocols. `sign_headers` is the other side: it signs a request the
way botocore would (the front door's own calls to moto, the CLI, tests).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import SplitResult, unquote_to_bytes, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW_SECONDS = 15 * 60
_AMZ_DATE = "%Y%m%dT%H%M%SZ"
_AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+)\s*,\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+)\s*,\s*Signature=(?P<signature>[0-9a-f]{64})\s*$"
)
# Headers botocore never signs (botocore.auth.SIGNED_HEADERS_BLACKLIST): `sign_headers` leaves them out as it
# does. Verification signs whatever the client listed, as AWS does.
_UNSIGNABLE = frozenset(
    {
        "baggage",
        "connection",
        "expect",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "traceparent",
        "tracestate",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "x-amzn-trace-id",
    }
)
_DEFAULT_PORTS = {"http": 80, "https": 443}
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")
# One table lookup per byte: what urllib.parse.quote does, without its per-call setup.
_QUOTE = tuple(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in range(256))
_QUOTE_PATH = tuple("/" if b == ord("/") else _QUOTE[b] for b in range(256))
_BARE_PATH = re.compile(r"[A-Za-z0-9\-_.~/]*")
_KEY_CACHE_SIZE = 256  # derived signing keys kept; a day's keys for every principal the stack knows


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
    string as received, without '?', `headers` every header received (repeats allowed).
    """
    pairs = headers.items() if isinstance(headers, Mapping) else headers
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

    if any(name not in lowered for name in signed_names):
        raise SignatureError(Failure.BAD_SIGNATURE, BAD_SIGNATURE_MESSAGE)

    signed_at = _parse_amz_date(amz_date)
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

    payload_hash = hashlib.sha256(body).hexdigest()
    content_sha = _one(lowered, "x-amz-content-sha256")
    if content_sha is not None and not hmac.compare_digest(content_sha, payload_hash):
        # A client signs this header's value in place of the body's hash, so a body that does not match it
        # must be caught here (UNSIGNED-PAYLOAD included: fail closed).
        raise SignatureError(Failure.BAD_SIGNATURE, BAD_SIGNATURE_MESSAGE)

    names = sorted(set(signed_names))
    canonical_request = "\n".join(
        (
            method.upper(),
            canonical_uri(path),
            canonical_query(query),
            "".join([f"{name}:{_header_value(lowered[name])}\n" for name in names]),
            ";".join(names),
            payload_hash,
        )
    )
    expected = _signature(canonical_request, amz_date, credentials.secret_key, scope_region, service)
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
    now: float | None = None,
) -> dict[str, str]:
    """Headers (Authorization, X-Amz-Date, ...) that sign a request the way boto3 would, signed at `now` (epoch).

    The result is what botocore's `SigV4Auth.add_auth` leaves on the request:
    `headers` minus any Authorization, X-Amz-Date (and X-Amz-Security-Token
    when the credentials carry a token), then X-Amz-Date, X-Amz-Security-Token
    and Authorization, in that order. A URL's query is signed in its canonical
    form, as `verify` and AWS read it (botocore takes it as already canonical).
    """
    given = dict(headers or {})
    if any(name.lower() == "date" for name in given):
        raise ValueError("sign_headers signs with X-Amz-Date; remove the Date header")
    token = credentials.session_token
    replaced = {"authorization", "x-amz-date", "x-amz-security-token"} if token else {"authorization", "x-amz-date"}
    signed = {name: value for name, value in given.items() if name.lower() not in replaced}
    amz_date = time.strftime(_AMZ_DATE, time.gmtime(now))
    signed["X-Amz-Date"] = amz_date
    if token:
        signed["X-Amz-Security-Token"] = token

    split = urlsplit(url)
    to_sign: dict[str, list[str]] = {}
    for name, value in signed.items():
        lowered = name.lower()
        if lowered not in _UNSIGNABLE:
            to_sign.setdefault(lowered, []).append(value)
    if "host" not in to_sign:
        to_sign["host"] = [_host_of(split)]
    names = sorted(to_sign)
    content_sha = to_sign.get("x-amz-content-sha256")
    canonical_request = "\n".join(
        (
            method.upper(),
            canonical_uri(split.path),
            canonical_query(split.query),
            "".join([f"{name}:{_header_value(to_sign[name])}\n" for name in names]),
            ";".join(names),
            content_sha[0] if content_sha else hashlib.sha256(body).hexdigest(),
        )
    )
    signature = _signature(canonical_request, amz_date, credentials.secret_key, region, service)
    signed["Authorization"] = (
        f"{ALGORITHM} Credential={credentials.access_key_id}/{amz_date[:8]}/{region}/{service}/aws4_request, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return signed


@functools.lru_cache(maxsize=4096)  # a Management API path is one connection's: the same for every message to it
def canonical_uri(path: str) -> str:
    """The canonical URI of a path as sent: dot segments and empty segments out, then percent-encoded again.

    Every service but S3 encodes the path twice: the client encodes it once to
    send it, and the canonical form encodes that again (`%3D` on the wire is
    `%253D` here), which is what botocore signs.
    """
    normalized = _remove_dot_segments(path) if path else "/"
    if _BARE_PATH.fullmatch(normalized):
        return normalized
    table = _QUOTE_PATH
    return "".join([table[b] for b in normalized.encode("utf-8", "surrogateescape")])


def canonical_query(query: str) -> str:
    """The canonical query string: each name and value decoded and encoded again, pairs sorted by name, then value.

    A name without `=` has an empty value; repeated names stay, ordered by value.
    """
    if not query:
        return ""
    pairs = []
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        pairs.append((_quote_component(name), _quote_component(value)))
    pairs.sort()
    return "&".join([f"{name}={value}" for name, value in pairs])


def _quote_component(text: str) -> str:
    raw = unquote_to_bytes(text) if "%" in text else text.encode("utf-8", "surrogateescape")
    table = _QUOTE
    return "".join([table[b] for b in raw])


def _remove_dot_segments(path: str) -> str:
    # RFC 3986 section 5.2.4, plus what AWS adds: consecutive slashes collapse (botocore's remove_dot_segments).
    out: list[str] = []
    for segment in path.split("/"):
        if segment and segment != ".":
            if segment == "..":
                if out:
                    out.pop()
            else:
                out.append(segment)
    first = "/" if path[0] == "/" else ""
    last = "/" if path[-1] == "/" and out else ""
    return first + "/".join(out) + last


def _header_value(values: list[str]) -> str:
    # Trimall: no white space around a value, runs of it inside collapsed to one space; repeats joined by commas.
    return ",".join([" ".join(value.split()) for value in values])


def _host_of(split: SplitResult) -> str:
    # What an HTTP client sends as Host for the URL: lower-case, no user info, the port unless it is the default.
    host = split.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = split.port
    if port is not None and port != _DEFAULT_PORTS.get(split.scheme):
        host = f"{host}:{port}"
    return host


def _signature(canonical_request: str, amz_date: str, secret_key: str, region: str, service: str) -> str:
    day = amz_date[:8]
    string_to_sign = (
        f"{ALGORITHM}\n{amz_date}\n{day}/{region}/{service}/aws4_request\n"
        + hashlib.sha256(canonical_request.encode("utf-8", "surrogateescape")).hexdigest()
    )
    return hmac.digest(_signing_key(secret_key, day, region, service), string_to_sign.encode(), "sha256").hex()


_signing_keys: dict[tuple[str, str, str, str], bytes] = {}
_signing_keys_lock = threading.Lock()


def _signing_key(secret_key: str, day: str, region: str, service: str) -> bytes:
    """The derived key, four HMACs the first time a (secret, day, region, service) is seen, a lookup after."""
    cache_key = (secret_key, day, region, service)
    key = _signing_keys.get(cache_key)
    if key is None:
        key = hmac.digest(f"AWS4{secret_key}".encode(), day.encode(), "sha256")
        for part in (region, service, "aws4_request"):
            key = hmac.digest(key, part.encode(), "sha256")
        with _signing_keys_lock:  # the gateway and the front door verify on different threads
            if len(_signing_keys) >= _KEY_CACHE_SIZE:
                _signing_keys.clear()  # yesterday's keys and rotated secrets go; today's come back on first use
            _signing_keys[cache_key] = key
    return key


@functools.lru_cache(maxsize=64)
def _parse_amz_date(amz_date: str) -> datetime:
    # Requests signed in the same second carry the same date: parse it once (strptime is a large share of a verify).
    try:
        return datetime.strptime(amz_date, _AMZ_DATE).replace(tzinfo=UTC)
    except ValueError:
        raise SignatureError(
            Failure.INCOMPLETE, f"Date must be in ISO-8601 'basic format'. Got '{amz_date}'."
        ) from None


def _one(headers: Mapping[str, list[str]], name: str) -> str | None:
    values = headers.get(name)
    return values[0] if values else None

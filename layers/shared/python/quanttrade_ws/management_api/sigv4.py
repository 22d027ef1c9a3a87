"""SigV4 for Management API calls: what botocore's SigV4Auth produces, computed directly.

The derived signing key is cached per (secret, date), so a message costs two
SHA-256 and one HMAC, and no AWSRequest objects are built.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from typing import Any, Protocol

from quanttrade_ws.connection_gateway import GatewayError

SERVICE = "execute-api"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")
# One lookup per byte beats urllib.parse.quote here and spares importing it on the hot path.
_QUOTE = [chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in range(256)]
_QUOTE_KEEP_SLASH = [*_QUOTE[: ord("/")], "/", *_QUOTE[ord("/") + 1 :]]


def quote_segment(value: str) -> str:
    """Percent-encode one path segment the way botocore serialises a URI label (`=` -> `%3D`, `/` -> `%2F`)."""
    table = _QUOTE
    return "".join([table[b] for b in value.encode()])


def _quote_path(path: str) -> str:
    table = _QUOTE_KEEP_SLASH
    return "".join([table[b] for b in path.encode()])


def _remove_dot_segments(path: str) -> str:
    # botocore's normalize_url_path: RFC 3986 dot segments out, empty segments collapsed.
    if not path:
        return "/"
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


def canonical_uri(wire_path: str) -> str:
    """The canonical URI SigV4 signs for a non-S3 service: the already-encoded path encoded once more.

    AWS's rule for every service but S3 is to URI-encode each segment twice, and
    botocore does exactly that (`%3D` on the wire is `%253D` in the canonical
    request); execute-api verifies against that form.
    """
    return _quote_path(_remove_dot_segments(wire_path))


class Credentials(Protocol):
    """What signing needs; botocore's ReadOnlyCredentials is one."""

    @property
    def access_key(self) -> str | None: ...

    @property
    def secret_key(self) -> str | None: ...

    @property
    def token(self) -> str | None: ...


class BotocoreCredentials:
    """Credentials from boto3's default session, resolved once, refreshed by botocore when they near expiry.

    On Lambda these come from the environment and never change for the sandbox's
    lifetime; elsewhere (SSO, assumed roles) botocore's refreshable credentials
    renew themselves inside `get_frozen_credentials`. The default session is the one
    the function's boto3 clients (its DynamoDB client) were built from, so its chain
    has already been resolved: a session of our own would cost a cold environment's
    first post about 60 ms of CPU to load botocore's data and resolve the chain again.
    """

    def __init__(self) -> None:
        self._resolved: Any = None
        self._lock = threading.Lock()

    def __call__(self) -> Credentials:
        if self._resolved is None:
            with self._lock:
                if self._resolved is None:
                    import boto3

                    if boto3.DEFAULT_SESSION is None:
                        boto3.setup_default_session()
                    resolved = boto3.DEFAULT_SESSION.get_credentials()  # type: ignore[union-attr]
                    if resolved is None:
                        raise GatewayError("no AWS credentials found for signing Management API calls")
                    self._resolved = resolved
        return self._resolved.get_frozen_credentials()  # type: ignore[no-any-return]


class SigV4Signer:
    """AWS Signature Version 4 for one host, region and service, signing `host;x-amz-date[;x-amz-security-token]`.

    Produces byte-for-byte what botocore's SigV4Auth produces for the same
    request (tests hold it to that), without building AWSRequest objects.
    """

    def __init__(self, host: str, region: str, service: str = SERVICE) -> None:
        self.host = host
        self.region = region
        self.service = service
        self._scope_tail = f"/{region}/{service}/aws4_request"
        self._key: tuple[str, str, bytes] | None = None  # (secret, yyyymmdd, derived key)

    def signing_key(self, secret_key: str, datestamp: str) -> bytes:
        cached = self._key
        if cached is not None and cached[0] == secret_key and cached[1] == datestamp:
            return cached[2]
        key = hmac.digest(f"AWS4{secret_key}".encode(), datestamp.encode(), "sha256")
        key = hmac.digest(key, self.region.encode(), "sha256")
        key = hmac.digest(key, self.service.encode(), "sha256")
        key = hmac.digest(key, b"aws4_request", "sha256")
        self._key = (secret_key, datestamp, key)
        return key

    def authorization(
        self,
        method: str,
        canonical_path: str,
        amz_date: str,
        payload_sha256: str,
        access_key: str,
        secret_key: str,
        token: str | None,
    ) -> str:
        """The Authorization header value. `canonical_path` is `canonical_uri(wire_path)`; no query string."""
        if token:
            headers = f"host:{self.host}\nx-amz-date:{amz_date}\nx-amz-security-token:{' '.join(token.split())}\n"
            signed = "host;x-amz-date;x-amz-security-token"
        else:
            headers = f"host:{self.host}\nx-amz-date:{amz_date}\n"
            signed = "host;x-amz-date"
        canonical_request = f"{method}\n{canonical_path}\n\n{headers}\n{signed}\n{payload_sha256}"
        datestamp = amz_date[:8]
        scope = datestamp + self._scope_tail
        string_to_sign = (
            f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical_request.encode()).hexdigest()}"
        )
        signature = hmac.new(self.signing_key(secret_key, datestamp), string_to_sign.encode(), "sha256").hexdigest()
        return f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"

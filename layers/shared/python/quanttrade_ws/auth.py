"""Identity: JWT verification at `$connect`, signed session tokens for resume.

API Gateway authorises only the `$connect` request, so the verified identity is
copied into the connection row and every later action re-checks its expiry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from quanttrade_ws.config import Settings
from quanttrade_ws.protocol import StreamType

SUBSCRIPTION_LEVELS = ("free", "basic", "premium", "enterprise")
CLIENT_TYPES = ("web", "mobile", "desktop", "bot")
KNOWN_PERMISSIONS = frozenset({f"read:{t.value}" for t in StreamType} | {"rooms:join", "rooms:send", "admin"})
ALL_PERMISSIONS = tuple(sorted(KNOWN_PERMISSIONS))


class AuthError(Exception):
    """A token or session that must not be let in. The message is safe to show the client."""


class Identity(BaseModel):
    """Who is on a connection, as the authorizer verified it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    user_id: str = Field(min_length=1, max_length=128)
    client_type: str = "web"
    permissions: frozenset[str] = frozenset()
    subscription_level: str = "free"
    token_expires_at: int = 0  # epoch seconds

    def can(self, permission: str) -> bool:
        return permission in self.permissions or "admin" in self.permissions

    def to_authorizer_context(self) -> dict[str, str | int]:
        """API Gateway's authorizer context holds only strings, numbers and booleans."""
        return {
            "user_id": self.user_id,
            "client_type": self.client_type,
            "permissions": ",".join(sorted(self.permissions)),
            "subscription_level": self.subscription_level,
            "token_expires_at": self.token_expires_at,
        }

    @classmethod
    def from_authorizer_context(cls, context: dict[str, Any]) -> Identity:
        permissions = str(context.get("permissions") or "")
        return cls(
            user_id=str(context.get("user_id") or context.get("principalId") or ""),
            client_type=str(context.get("client_type") or "web"),
            permissions=frozenset(p for p in permissions.split(",") if p),
            subscription_level=str(context.get("subscription_level") or "free"),
            token_expires_at=int(context.get("token_expires_at") or 0),
        )


class TokenVerifier:
    """Verifies access tokens: HS256 with a shared secret, or RS256 against a JWKS URL.

    The accepted algorithm is fixed by configuration, never taken from the token,
    which closes `alg: none` and HS/RS confusion.
    """

    def __init__(self, settings: Settings, secret: str | None = None) -> None:
        self._settings = settings
        self._algorithm = settings.jwt_algorithm
        self._secret = secret or settings.jwt_secret
        self._jwks: Any = None
        if self._algorithm == "RS256":
            import jwt

            self._jwks = jwt.PyJWKClient(str(settings.jwks_url), cache_keys=True, lifespan=3600)
        elif not self._secret:
            raise ValueError("HS256 verification needs a secret")

    def verify(self, token: str) -> Identity:
        import jwt  # deferred: only the authorizer and refresh pay for PyJWT and cryptography

        if not token or len(token) > 8192:
            raise AuthError("Missing or oversized token")
        if not token.isascii():  # JWTs are base64url; PyJWT would raise UnicodeEncodeError on lone surrogates
            raise AuthError("Malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("Malformed token") from None
        if header.get("alg") != self._algorithm:
            raise AuthError("Token algorithm not accepted")
        try:
            key: Any = self._secret
            if self._jwks is not None:
                key = self._jwks.get_signing_key_from_jwt(token).key
            claims = jwt.decode(
                token,
                key,
                algorithms=[self._algorithm],
                audience=self._settings.jwt_audience,
                issuer=self._settings.jwt_issuer,
                options={"require": ["exp", "sub", "iss", "aud"]},
                leeway=5,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("Token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("Token not yet valid") from None
        except (jwt.PyJWTError, ValueError):
            raise AuthError("Token rejected") from None
        return identity_from_claims(claims)


def identity_from_claims(claims: dict[str, Any]) -> Identity:
    permissions = claims.get("permissions", [])
    if not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions):
        raise AuthError("Token permissions must be a list of strings")
    level = claims.get("subscription_level", "free")
    client_type = claims.get("client_type", "web")
    if level not in SUBSCRIPTION_LEVELS or client_type not in CLIENT_TYPES:
        raise AuthError("Token has an unknown subscription level or client type")
    try:
        return Identity(
            user_id=str(claims["sub"]),
            client_type=client_type,
            permissions=frozenset(p for p in permissions if p in KNOWN_PERMISSIONS),
            subscription_level=level,
            token_expires_at=int(claims["exp"]),
        )
    except ValidationError:
        raise AuthError("Token subject is not acceptable") from None


def mint_token(
    secret: str,
    user_id: str,
    *,
    permissions: tuple[str, ...] | list[str] = ALL_PERMISSIONS,
    subscription_level: str = "premium",
    client_type: str = "web",
    expires_in: int = 24 * 3600,
    issuer: str = "quanttrade-auth",
    audience: str = "quanttrade-websocket",
    not_before: int | None = None,
) -> str:
    """An HS256 access token as the platform's auth service issues them (used locally and in tests)."""
    import jwt

    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": user_id,
        "iat": now,
        "exp": now + expires_in,
        "iss": issuer,
        "aud": audience,
        "permissions": list(permissions),
        "subscription_level": subscription_level,
        "client_type": client_type,
    }
    if not_before is not None:
        claims["nbf"] = not_before
    return jwt.encode(claims, secret, algorithm="HS256")


# ---------------------------------------------------------------- session tokens


@dataclass(frozen=True)
class Session:
    session_id: str
    user_id: str
    expires_at: int


class SessionTokens:
    """Compact HMAC-signed session tokens: `base64url(json).base64url(mac)`.

    The key is derived from the service secret with a distinct label, so a
    session token can never be replayed as an access token or the reverse. The
    secret may be given as a callable, read on first use: functions that never
    issue or check a session token never fetch it.
    """

    def __init__(self, secret: str | Callable[[], str]) -> None:
        self._secret = secret
        self._derived: bytes | None = None

    @property
    def _key(self) -> bytes:
        if self._derived is None:
            secret = self._secret() if callable(self._secret) else self._secret
            self._derived = hmac.new(secret.encode(), b"quanttrade-session-v1", hashlib.sha256).digest()
        return self._derived

    def issue(self, session: Session) -> str:
        body = _b64(json.dumps({"sid": session.session_id, "uid": session.user_id, "exp": session.expires_at}).encode())
        return f"{body}.{_b64(self._mac(body))}"

    def verify(self, token: str, now: float | None = None) -> Session:
        body, _, mac = token.partition(".")
        # Issued tokens are ASCII; anything else would make compare_digest / encode() raise, not refuse.
        if not token.isascii() or not body or not mac or not hmac.compare_digest(_b64(self._mac(body)), mac):
            raise AuthError("Session token rejected")
        try:
            claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            session = Session(str(claims["sid"]), str(claims["uid"]), int(claims["exp"]))
        except (ValueError, KeyError, TypeError):
            raise AuthError("Session token rejected") from None
        if session.expires_at < (time.time() if now is None else now):
            raise AuthError("Session expired")
        return session

    def _mac(self, body: str) -> bytes:
        return hmac.new(self._key, body.encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

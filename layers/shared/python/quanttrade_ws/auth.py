"""Identity: JWT verification at `$connect`, signed session tokens for resume.

API Gateway authorises only the `$connect` request, so the verified identity is
copied into the connection row and every later action re-checks its expiry.

Keys come from a `KeySource`: a fixed string (locally, in tests) or a callable
returning the keys to accept, newest first. On AWS that is a `KeyCache` over a
Secrets Manager secret: its AWSCURRENT and AWSPREVIOUS versions, re-read when
older than the cache's bound, so a rotation reaches warm functions and tokens
signed just before it still verify.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from quanttrade_protocol.enums import Permission
from quanttrade_ws.clock import Clock, wall_clock
from quanttrade_ws.config import SPACE_SEPARATED_CLAIMS, Settings

SUBSCRIPTION_LEVELS = ("free", "basic", "premium", "enterprise")
CLIENT_TYPES = ("web", "mobile", "desktop", "bot")
KNOWN_PERMISSIONS: frozenset[str] = frozenset(Permission)
# Plain strings, for what goes into tokens and templates (a CDK construct takes no enum of ours).
ALL_PERMISSIONS = tuple(sorted(permission.value for permission in Permission))
SESSION_AUDIENCE = "quanttrade-session"  # never an access token's audience: neither token passes for the other
SESSION_ISSUER = "quanttrade-websocket"

# A fixed key, or a callable giving the keys to accept, the one to sign with first.
KeySource = str | Callable[[], Sequence[str]]


def keys_of(source: KeySource) -> tuple[str, ...]:
    keys = (source,) if isinstance(source, str) else tuple(source())
    if not keys or not all(keys):
        raise KeyUnavailable("No signing key available")
    return keys


class KeyCache:
    """A secret's current and previous versions, read through a cache of bounded age.

    `fetch(stage)` returns the secret string of one version stage, or None when
    the secret has no such version (AWSPREVIOUS before the first rotation).
    """

    STAGES = ("AWSCURRENT", "AWSPREVIOUS")

    def __init__(
        self,
        fetch: Callable[[str], str | None],
        max_age_seconds: float = 300,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self.max_age_seconds = max_age_seconds
        self._clock = clock
        self._keys: tuple[str, ...] = ()
        self._read_at = 0.0
        self._lock = threading.Lock()  # the local stack shares a runtime between worker threads

    def __call__(self) -> tuple[str, ...]:
        with self._lock:
            if not self._keys or self._clock() - self._read_at >= self.max_age_seconds:
                found = [self._fetch(stage) for stage in self.STAGES]
                current = found[0]
                if not current:
                    raise KeyUnavailable("No signing key available")
                self._keys = tuple(dict.fromkeys(key for key in found if key))  # current first, no duplicate
                self._read_at = self._clock()
            return self._keys


def secrets_manager_versions(client_factory: Callable[[], Any], secret_id: str) -> Callable[[str], str | None]:
    """`fetch(stage)` for a KeyCache: one version stage of a Secrets Manager secret."""

    def fetch(stage: str) -> str | None:
        client = client_factory()
        try:
            return str(client.get_secret_value(SecretId=secret_id, VersionStage=stage)["SecretString"])
        except client.exceptions.ResourceNotFoundException:
            if stage == KeyCache.STAGES[0]:
                raise
            return None  # never rotated: there is no previous version

    return fetch


class AuthError(Exception):
    """A token or session that must not be let in. The message is safe to show the client."""


class KeyUnavailable(Exception):
    """The keys to check a token with could not be had (empty secret, JWKS unreachable).

    A fault of the service, not of the token, so deliberately no AuthError: the
    authorizer counts it as a failure to alarm on, not as a refusal.
    """


class Identity(BaseModel):
    """Who is on a connection, as the authorizer verified it."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    user_id: str = Field(min_length=1, max_length=128)
    client_type: str = "web"
    permissions: frozenset[Permission] = frozenset()
    subscription_level: str = "free"
    token_expires_at: int = 0  # epoch seconds
    token_issued_at: int = 0  # the token's `iat`: a refresh may not go back to an older token

    def can(self, permission: Permission) -> bool:
        return permission in self.permissions or Permission.ADMIN in self.permissions

    def to_authorizer_context(self) -> dict[str, str | int]:
        """API Gateway's authorizer context holds only strings, numbers and booleans."""
        return {
            "user_id": self.user_id,
            "client_type": self.client_type,
            "permissions": ",".join(sorted(self.permissions)),
            "subscription_level": self.subscription_level,
            "token_expires_at": self.token_expires_at,
            "token_issued_at": self.token_issued_at,
        }

    @classmethod
    def from_authorizer_context(cls, context: dict[str, Any]) -> Identity:
        permissions = str(context.get("permissions") or "")
        return cls(
            user_id=str(context.get("user_id") or context.get("principalId") or ""),
            client_type=str(context.get("client_type") or "web"),
            permissions=frozenset(Permission(p) for p in permissions.split(",") if p in KNOWN_PERMISSIONS),
            subscription_level=str(context.get("subscription_level") or "free"),
            token_expires_at=int(context.get("token_expires_at") or 0),
            token_issued_at=int(context.get("token_issued_at") or 0),
        )


class TokenVerifier:
    """Verifies access tokens: HS256 with a shared secret, or RS256 against a JWKS URL (Cognito, any OIDC issuer).

    The accepted algorithm is fixed by configuration, never taken from the token,
    which closes `alg: none` and HS/RS confusion. Beyond signature and expiry the
    settings say what else must hold: the issuer, the audience or (Cognito) the app
    client, `token_use`, and which claim carries the permissions.
    """

    def __init__(self, settings: Settings, keys: KeySource | None = None) -> None:
        self._settings = settings
        self._algorithm = settings.jwt_algorithm
        self._keys = keys or settings.jwt_secret
        self._jwks: Any = None
        self._audience = settings.access_token_audience()
        self._permissions = PermissionClaim.from_settings(settings)
        required = ["exp", "sub", "iss"]
        if self._audience:
            required.append("aud")
        if settings.jwt_token_use:
            required.append("token_use")
        self._required = required
        if self._algorithm == "RS256":
            import jwt

            self._jwks = jwt.PyJWKClient(str(settings.jwks_url), cache_keys=True, lifespan=3600)
        elif not self._keys:
            raise ValueError("HS256 verification needs a key: jwt_secret, or keys from jwt_secret_arn")

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
            if self._jwks is not None:
                candidates: Sequence[Any] = (self._jwks.get_signing_key_from_jwt(token).key,)
            else:
                assert self._keys is not None
                # During a rotation a token may be signed with the previous key.
                candidates = keys_of(self._keys)
            claims = _decode_with_any(
                token,
                candidates,
                algorithms=[self._algorithm],
                audience=list(self._audience) if self._audience else None,
                issuer=list(self._settings.jwt_issuer),
                # Without an audience to check (the app client is checked below), an `aud` claim
                # (Cognito ID tokens carry the client id there) must not make PyJWT refuse the token.
                options={"require": self._required, "verify_aud": bool(self._audience)},
                leeway=5,
            )
        except jwt.PyJWKClientConnectionError as error:
            raise KeyUnavailable(f"JWKS unreachable: {error}") from None
        except jwt.ExpiredSignatureError:
            raise AuthError("Token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("Token not yet valid") from None
        except (jwt.PyJWTError, ValueError):
            raise AuthError("Token rejected") from None
        self._check_use_and_client(claims)
        return identity_from_claims(claims, self._permissions)

    def _check_use_and_client(self, claims: dict[str, Any]) -> None:
        token_use = self._settings.jwt_token_use
        if token_use and claims.get("token_use") != token_use:
            # An ID token where access tokens are expected (or the reverse) says who someone is,
            # not what this API lets them do.
            raise AuthError("Token rejected")
        client_ids = self._settings.jwt_client_id
        if client_ids:
            client = claims.get("client_id") if token_use == "access" else claims.get("aud")
            clients = client if isinstance(client, list) else [client]
            if not any(isinstance(c, str) and c in client_ids for c in clients):
                raise AuthError("Token rejected")


def _decode_with_any(token: str, keys: Sequence[Any], **options: Any) -> dict[str, Any]:
    """Decode with the first key whose signature matches; other failures (expiry, audience) are final."""
    import jwt

    for key in keys[:-1]:
        try:
            return dict(jwt.decode(token, key, **options))
        except jwt.InvalidSignatureError:
            continue
    return dict(jwt.decode(token, keys[-1], **options))


@dataclass(frozen=True)
class PermissionClaim:
    """Which claim carries a token's permissions, and how its values become permissions.

    The default is the platform's own `permissions` list. An OIDC provider's `scope`
    (space-separated, each scope `<resource server>/<permission>` with `prefix` the
    resource server's `identifier/`), or Cognito's `cognito:groups` with `mapping`
    from group to permissions, serve as well. Values that are no known permission
    (after the prefix and the mapping) are dropped, never an error: a provider's
    tokens carry scopes and groups meant for other applications too.
    """

    claim: str = "permissions"
    prefix: str = ""
    mapping: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> PermissionClaim:
        return cls(settings.jwt_permissions_claim, settings.jwt_scope_prefix, settings.jwt_permission_map)

    def permissions(self, claims: dict[str, Any]) -> frozenset[Permission]:
        raw = claims.get(self.claim, [])
        if isinstance(raw, str) and self.claim in SPACE_SEPARATED_CLAIMS:
            raw = raw.split()
        if not isinstance(raw, list) or not all(isinstance(value, str) for value in raw):
            raise AuthError(f"Token {self.claim} must be a list of strings")
        values: list[str] = raw
        if self.prefix:
            values = [value[len(self.prefix) :] for value in values if value.startswith(self.prefix)]
        if self.mapping:
            values = [permission for value in values for permission in self.mapping.get(value, ())]
        return frozenset(Permission(value) for value in values if value in KNOWN_PERMISSIONS)


DEFAULT_PERMISSION_CLAIM = PermissionClaim()


def identity_from_claims(claims: dict[str, Any], permissions: PermissionClaim = DEFAULT_PERMISSION_CLAIM) -> Identity:
    granted = permissions.permissions(claims)
    level = claims.get("subscription_level", "free")
    client_type = claims.get("client_type", "web")
    if level not in SUBSCRIPTION_LEVELS or client_type not in CLIENT_TYPES:
        raise AuthError("Token has an unknown subscription level or client type")
    try:
        return Identity(
            user_id=str(claims["sub"]),
            client_type=client_type,
            permissions=granted,
            subscription_level=level,
            token_expires_at=int(claims["exp"]),
            token_issued_at=int(claims.get("iat") or 0),
        )
    except ValidationError:
        raise AuthError("Token subject is not acceptable") from None


# ---------------------------------------------------------------- session tokens


@dataclass(frozen=True)
class Session:
    session_id: str
    user_id: str
    expires_at: int
    token_id: str = ""  # the token's jti: each session token resumes once


class SessionTokens:
    """Session tokens: HS256 JWTs with their own key and audience (`quanttrade-session`) and a jti.

    The key is the session secret's, never the access tokens', and the audience
    differs too, so neither kind of token passes for the other. The keys may be
    given as a callable, read on first use: functions that never issue or check
    a session token never fetch them.
    """

    ALGORITHM = "HS256"

    def __init__(self, keys: KeySource, clock: Clock = wall_clock) -> None:
        self._keys = keys
        self._clock = clock  # the service's: a token's age and expiry are read on the same clock as everything else

    def issue(self, session: Session) -> str:
        import jwt

        issued = int(self._clock())
        claims = {
            "iss": SESSION_ISSUER,
            "aud": SESSION_AUDIENCE,
            "sub": session.user_id,
            "sid": session.session_id,
            "iat": issued,
            "exp": session.expires_at,
            "jti": session.token_id or uuid.uuid4().hex,
        }
        return jwt.encode(claims, keys_of(self._keys)[0], algorithm=self.ALGORITHM)

    def verify(self, token: str) -> Session:
        import jwt

        # Issued tokens are ASCII base64url; anything else would make PyJWT raise other than PyJWTError.
        if not token or not token.isascii() or len(token) > 2048:
            raise AuthError("Session token rejected")
        try:
            claims = _decode_with_any(
                token,
                keys_of(self._keys),
                algorithms=[self.ALGORITHM],
                audience=SESSION_AUDIENCE,
                issuer=SESSION_ISSUER,
                # Issue time and expiry are checked below against our clock, not PyJWT's (the machine's).
                options={
                    "require": ["exp", "sub", "sid", "jti", "iss", "aud"],
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
            session = Session(str(claims["sid"]), str(claims["sub"]), int(claims["exp"]), str(claims["jti"]))
            issued_at = int(claims.get("iat", 0))
        except (jwt.PyJWTError, ValueError, KeyError, TypeError):
            raise AuthError("Session token rejected") from None
        now = self._clock()
        if issued_at > now:
            raise AuthError("Session token rejected")  # issued in the future: not one of ours as our clock sees it
        if session.expires_at < now:
            raise AuthError("Session expired")
        return session

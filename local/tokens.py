"""Development access tokens: HS256 tokens shaped as the platform's auth service issues them.

The local stack, its command line, the benchmarks and the tests mint them with the
stack's key; no Lambda function ever mints an access token, so this is not in the layer.
"""

from __future__ import annotations

import time
from typing import Any

from quanttrade_ws.auth import ALL_PERMISSIONS
from quanttrade_ws.config import DEFAULT_AUDIENCE, DEFAULT_ISSUER


def mint_token(
    secret: str,
    user_id: str,
    *,
    permissions: tuple[str, ...] | list[str] = ALL_PERMISSIONS,
    subscription_level: str = "premium",
    client_type: str = "web",
    expires_in: int = 24 * 3600,
    issuer: str = DEFAULT_ISSUER,
    audience: str = DEFAULT_AUDIENCE,
    not_before: int | None = None,
    issued_at: int | None = None,
) -> str:
    """An HS256 access token as the platform's auth service issues them (locally, in benchmarks and in tests)."""
    import jwt

    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": user_id,
        "iat": now if issued_at is None else issued_at,
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

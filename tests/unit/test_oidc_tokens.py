"""OIDC and Cognito access: issuers, audience or app client, token_use, and where permissions come from.

Tokens are shaped as Cognito issues them (RS256, kid, `client_id` + `token_use: access` without `aud` in access
tokens, `aud` = the client id + `token_use: id` in ID tokens), signed with a local key whose public half a JWKS
endpoint on 127.0.0.1 publishes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import ValidationError

from quanttrade_ws.auth import AuthError, Identity, TokenVerifier
from quanttrade_ws.config import Settings
from tests.jwks import serve_jwks

KID = "cognito-key-1"
POOL_ISSUER = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbCdEf123"
OTHER_POOL = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Other0000"
CLIENT_ID = "4example0client0id0abcdefgh"
OTHER_CLIENT = "7another0client0id0abcdefg"
SESSION_SECRET = "oidc-test-session-secret-0123456789abcdef-0123456789"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def jwks_url(key: rsa.RSAPrivateKey) -> Iterator[str]:
    with serve_jwks(key.public_key(), KID) as url:
        yield url


def sign(key: rsa.RSAPrivateKey, claims: dict[str, Any]) -> str:
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, key, algorithm="RS256", headers={"kid": KID})


def access_claims(**overrides: Any) -> dict[str, Any]:
    """An access token as a Cognito user pool issues it after an OAuth sign-in: no `aud`."""
    now = int(time.time())
    return {
        "sub": "a1b2c3d4-0000-4000-8000-000000000001",
        "cognito:groups": ["traders"],
        "iss": POOL_ISSUER,
        "version": 2,
        "client_id": CLIENT_ID,
        "token_use": "access",
        "scope": "openid quanttrade/read:market_data quanttrade/rooms:join otherapi/read:market_data",
        "auth_time": now,
        "exp": now + 600,
        "iat": now,
        "jti": str(uuid.uuid4()),
        "username": "alice",
        **overrides,
    }


def id_claims(**overrides: Any) -> dict[str, Any]:
    """An ID token as a Cognito user pool issues it: `aud` is the app client."""
    now = int(time.time())
    return {
        "sub": "a1b2c3d4-0000-4000-8000-000000000001",
        "aud": CLIENT_ID,
        "cognito:groups": ["traders", "desk-admins"],
        "email_verified": True,
        "token_use": "id",
        "auth_time": now,
        "iss": POOL_ISSUER,
        "cognito:username": "alice",
        "exp": now + 600,
        "iat": now,
        "email": "alice@example.com",
        **overrides,
    }


def cognito_access_settings(jwks_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "jwt_algorithm": "RS256",
        "jwks_url": jwks_url,
        "jwt_issuer": POOL_ISSUER,
        "jwt_client_id": CLIENT_ID,
        "jwt_token_use": "access",
        "jwt_permissions_claim": "scope",
        "jwt_scope_prefix": "quanttrade/",
        "session_secret": SESSION_SECRET,
    }
    return Settings(**{**values, **overrides})


GROUP_MAP = {"traders": ["read:market_data", "read:alerts"], "desk-admins": ["admin"]}


def cognito_id_settings(jwks_url: str, **overrides: Any) -> Settings:
    return cognito_access_settings(
        jwks_url,
        jwt_token_use="id",
        jwt_permissions_claim="cognito:groups",
        jwt_scope_prefix="",
        jwt_permission_map=GROUP_MAP,
        **overrides,
    )


def refused(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(AuthError) as caught:
        verifier.verify(token)
    return str(caught.value)


# ---------------------------------------------------------------- Cognito access tokens, scopes


def test_a_cognito_access_token_is_accepted_with_its_scopes_as_permissions(
    jwks_url: str, key: rsa.RSAPrivateKey
) -> None:
    # GIVEN a verifier for the pool's access tokens, permissions from the resource server's scopes
    verifier = TokenVerifier(cognito_access_settings(jwks_url))
    # WHEN a Cognito access token (no aud) is verified
    identity = verifier.verify(sign(key, access_claims()))
    # THEN it is accepted; only this resource server's scopes count, without their prefix
    assert identity.user_id == "a1b2c3d4-0000-4000-8000-000000000001"
    assert identity.permissions == frozenset({"read:market_data", "rooms:join"})
    # AND the platform's own claims are absent, so the defaults apply
    assert (identity.subscription_level, identity.client_type) == ("free", "web")


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"iss": OTHER_POOL}, "another user pool"),
        ({"client_id": OTHER_CLIENT}, "another app client"),
        ({"client_id": None}, "no client_id"),
        ({"token_use": "id"}, "claims to be an ID token"),
        ({"token_use": None}, "no token_use"),
        ({"exp": int(time.time()) - 60}, "expired"),
    ],
)
def test_cognito_access_tokens_that_do_not_fit_are_refused(
    jwks_url: str, key: rsa.RSAPrivateKey, overrides: dict[str, Any], why: str
) -> None:
    verifier = TokenVerifier(cognito_access_settings(jwks_url))
    token = sign(key, access_claims(**overrides))
    assert refused(verifier, token) in {"Token rejected", "Token expired"}, why


def test_an_expired_cognito_token_says_so(jwks_url: str, key: rsa.RSAPrivateKey) -> None:
    verifier = TokenVerifier(cognito_access_settings(jwks_url))
    assert refused(verifier, sign(key, access_claims(exp=int(time.time()) - 60))) == "Token expired"


def test_an_id_token_is_refused_where_access_tokens_are_expected(jwks_url: str, key: rsa.RSAPrivateKey) -> None:
    # GIVEN the access-token configuration and an ID token of the same pool and client (aud = client id)
    verifier = TokenVerifier(cognito_access_settings(jwks_url))
    # THEN token_use refuses it, although issuer, signature and client all match
    assert refused(verifier, sign(key, id_claims())) == "Token rejected"


def test_scopes_must_be_a_space_separated_string_or_a_list(jwks_url: str, key: rsa.RSAPrivateKey) -> None:
    verifier = TokenVerifier(cognito_access_settings(jwks_url))
    as_list = verifier.verify(sign(key, access_claims(scope=["quanttrade/read:alerts"])))
    assert as_list.permissions == frozenset({"read:alerts"})
    assert "scope" in refused(verifier, sign(key, access_claims(scope={"quanttrade/read:alerts": True})))


def test_without_a_prefix_scopes_are_permissions_as_they_are(jwks_url: str, key: rsa.RSAPrivateKey) -> None:
    verifier = TokenVerifier(cognito_access_settings(jwks_url, jwt_scope_prefix=""))
    identity = verifier.verify(sign(key, access_claims(scope="read:alerts rooms:send quanttrade/admin profile")))
    assert identity.permissions == frozenset({"read:alerts", "rooms:send"})


# ---------------------------------------------------------------- Cognito ID tokens, groups


def test_a_cognito_id_token_is_accepted_with_groups_mapped_to_permissions(
    jwks_url: str, key: rsa.RSAPrivateKey
) -> None:
    # GIVEN a verifier for ID tokens whose groups map to permissions
    verifier = TokenVerifier(cognito_id_settings(jwks_url))
    # WHEN an ID token of a member of two groups is verified
    identity = verifier.verify(sign(key, id_claims()))
    # THEN each group's permissions are granted
    assert identity.permissions == frozenset({"read:market_data", "read:alerts", "admin"})
    # AND a group the map does not name grants nothing
    assert verifier.verify(sign(key, id_claims(**{"cognito:groups": ["visitors"]}))).permissions == frozenset()
    assert verifier.verify(sign(key, id_claims(**{"cognito:groups": None}))).permissions == frozenset()


@pytest.mark.parametrize(
    "overrides",
    [
        {"aud": OTHER_CLIENT},  # another app client's ID token
        {"token_use": "access"},
        {"iss": OTHER_POOL},
    ],
)
def test_cognito_id_tokens_that_do_not_fit_are_refused(
    jwks_url: str, key: rsa.RSAPrivateKey, overrides: dict[str, Any]
) -> None:
    verifier = TokenVerifier(cognito_id_settings(jwks_url))
    assert refused(verifier, sign(key, id_claims(**overrides))) == "Token rejected"


def test_an_access_token_is_refused_where_id_tokens_are_expected(jwks_url: str, key: rsa.RSAPrivateKey) -> None:
    verifier = TokenVerifier(cognito_id_settings(jwks_url))
    assert refused(verifier, sign(key, access_claims())) == "Token rejected"


def test_groups_must_be_a_list(jwks_url: str, key: rsa.RSAPrivateKey) -> None:
    verifier = TokenVerifier(cognito_id_settings(jwks_url))
    assert "cognito:groups" in refused(verifier, sign(key, id_claims(**{"cognito:groups": "traders"})))


# ---------------------------------------------------------------- any OIDC issuer: issuers and audiences


def test_several_issuers_are_each_accepted_and_no_other(jwks_url: str, key: rsa.RSAPrivateKey) -> None:
    # GIVEN two issuers (a migration between user pools), as context gives them: comma-separated
    settings = cognito_access_settings(jwks_url, jwt_issuer=f"{POOL_ISSUER},{OTHER_POOL}")
    verifier = TokenVerifier(settings)
    # THEN tokens of either are accepted and a third issuer's are refused
    assert verifier.verify(sign(key, access_claims())).user_id
    assert verifier.verify(sign(key, access_claims(iss=OTHER_POOL))).user_id
    assert refused(verifier, sign(key, access_claims(iss="https://evil.example.com"))) == "Token rejected"


def test_an_oidc_audience_check_needs_aud_and_accepts_any_configured_value(
    jwks_url: str, key: rsa.RSAPrivateKey
) -> None:
    # GIVEN a generic OIDC provider whose access tokens carry aud, with the platform's permissions claim
    settings = Settings(
        jwt_algorithm="RS256",
        jwks_url=jwks_url,
        jwt_issuer="https://idp.example.com/",
        jwt_audience='["api://quanttrade", "quanttrade-websocket"]',
        session_secret=SESSION_SECRET,
    )
    verifier = TokenVerifier(settings)
    claims = {"sub": "u1", "iss": "https://idp.example.com/", "exp": int(time.time()) + 60}
    # THEN either audience passes, another one or none fails
    granted = verifier.verify(sign(key, {**claims, "aud": "api://quanttrade", "permissions": ["read:alerts"]}))
    assert granted.permissions == frozenset({"read:alerts"})
    assert verifier.verify(sign(key, {**claims, "aud": ["other", "quanttrade-websocket"]})).user_id == "u1"
    assert refused(verifier, sign(key, {**claims, "aud": "api://other"})) == "Token rejected"
    assert refused(verifier, sign(key, claims)) == "Token rejected"


def test_the_default_still_checks_the_platforms_issuer_and_audience(jwks_url: str, key: rsa.RSAPrivateKey) -> None:
    # GIVEN RS256 with nothing else configured: the platform auth service's iss and aud
    verifier = TokenVerifier(Settings(jwt_algorithm="RS256", jwks_url=jwks_url, session_secret=SESSION_SECRET))
    platform = {"sub": "u1", "iss": "quanttrade-auth", "aud": "quanttrade-websocket", "exp": int(time.time()) + 60}
    assert isinstance(verifier.verify(sign(key, platform)), Identity)
    # THEN a Cognito access token (no aud, another issuer) is refused
    assert refused(verifier, sign(key, access_claims())) == "Token rejected"


# ---------------------------------------------------------------- settings: combinations and transport


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"jwt_client_id": CLIENT_ID, "jwt_audience": "x", "jwt_token_use": "access"}, "not both"),
        ({"jwt_client_id": CLIENT_ID}, "needs jwt_token_use"),
        ({"jwt_permission_map": {"traders": ["read:weather"]}}, "unknown permissions"),
        ({"jwt_permission_map": "{not json"}, "JSON object"),
        ({"jwt_issuer": ""}, "jwt_issuer"),
        ({"jwt_audience": ""}, "non-empty names"),
        ({"jwt_issuer": ["a,b"]}, "comma"),
        ({"jwt_token_use": "refresh"}, "jwt_token_use"),
        ({"jwt_permissions_claim": ""}, "jwt_permissions_claim"),
    ],
)
def test_contradictory_or_unknown_token_settings_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(jwt_secret="k" * 40, session_secret=SESSION_SECRET, **values)


def test_token_settings_survive_the_functions_environment() -> None:
    # GIVEN lists and a map, as context would set them
    settings = Settings(
        jwt_algorithm="RS256",
        jwks_url="https://cognito-idp.eu-west-1.amazonaws.com/pool/.well-known/jwks.json",
        jwt_issuer=[POOL_ISSUER, OTHER_POOL],
        jwt_client_id=f"{CLIENT_ID},{OTHER_CLIENT}",
        jwt_token_use="id",
        jwt_permissions_claim="cognito:groups",
        jwt_permission_map='{"traders": ["read:market_data"], "desk-admins": ["admin"]}',
        session_secret_arn="arn:aws:secretsmanager:eu-west-1:111111111111:secret:s-AbCdEf",
    )
    # WHEN they travel as the functions' environment
    env = settings.to_env()
    # THEN they arrive as plain strings and rebuild the same settings
    assert env["QT_JWT_ISSUER"] == f"{POOL_ISSUER},{OTHER_POOL}"
    assert env["QT_JWT_CLIENT_ID"] == f"{CLIENT_ID},{OTHER_CLIENT}"
    assert "QT_JWT_AUDIENCE" not in env
    assert Settings.from_env(env) == settings
    assert settings.access_token_audience() is None

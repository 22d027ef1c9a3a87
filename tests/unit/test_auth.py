"""Access-token verification (one named test per attack) and session tokens."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from local.tokens import mint_token
from quanttrade_protocol.enums import Permission, StreamType
from quanttrade_ws.auth import (
    ALL_PERMISSIONS,
    AuthError,
    Identity,
    KeyCache,
    KeyUnavailable,
    Session,
    SessionTokens,
    TokenVerifier,
    identity_from_claims,
    secrets_manager_versions,
)
from quanttrade_ws.config import Settings
from tests.jwks import serve_jwks

SECRET = "unit-test-secret-that-is-long-enough-for-hs512-0123456789abcdef-0"
KID = "test-key-1"
SESSION_SECRET = "unit-test-session-secret-0123456789abcdef-0123456789abcdef"


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "user-42",
        "iat": now,
        "exp": now + 600,
        "iss": "quanttrade-auth",
        "aud": "quanttrade-websocket",
        "permissions": ["read:market_data", "rooms:join"],
        "subscription_level": "basic",
        "client_type": "bot",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture
def hs_verifier() -> TokenVerifier:
    return TokenVerifier(Settings(jwt_secret=SECRET, session_secret=SESSION_SECRET))


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def jwks_url(rsa_key: rsa.RSAPrivateKey) -> Iterator[str]:
    """A JWKS endpoint on 127.0.0.1 serving the test key's public half."""
    with serve_jwks(rsa_key.public_key(), KID) as url:
        yield url


@pytest.fixture
def rs_verifier(jwks_url: str) -> TokenVerifier:
    return TokenVerifier(Settings(jwt_algorithm="RS256", jwks_url=jwks_url, session_secret=SESSION_SECRET))


def rs_token(key: rsa.RSAPrivateKey, **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), key, algorithm="RS256", headers={"kid": KID})


def refused(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(AuthError) as caught:
        verifier.verify(token)
    return str(caught.value)


# ---------------------------------------------------------------- HS256: the good path


def test_valid_hs256_token_gives_identity(hs_verifier: TokenVerifier) -> None:
    # GIVEN a token the auth service issued, WHEN verified, THEN every claim lands in the identity
    identity = hs_verifier.verify(jwt.encode(claims(), SECRET, algorithm="HS256"))
    assert identity.user_id == "user-42"
    assert identity.permissions == frozenset({"read:market_data", "rooms:join"})
    assert identity.subscription_level == "basic"
    assert identity.client_type == "bot"
    assert identity.token_expires_at > time.time()


def test_mint_token_round_trips(hs_verifier: TokenVerifier) -> None:
    identity = hs_verifier.verify(mint_token(SECRET, "u-1", subscription_level="enterprise", client_type="desktop"))
    assert identity.user_id == "u-1"
    assert identity.permissions == frozenset(ALL_PERMISSIONS)
    assert identity.subscription_level == "enterprise"


def test_claims_default_to_free_web_without_permissions(hs_verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(permissions=None, subscription_level=None, client_type=None), SECRET, algorithm="HS256")
    identity = hs_verifier.verify(token)
    assert identity.permissions == frozenset()
    assert identity.subscription_level == "free"
    assert identity.client_type == "web"


# ---------------------------------------------------------------- HS256: attacks


def test_expired_token(hs_verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(exp=int(time.time()) - 60), SECRET, algorithm="HS256")
    assert refused(hs_verifier, token) == "Token expired"


def test_not_yet_valid_token(hs_verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(nbf=int(time.time()) + 3600), SECRET, algorithm="HS256")
    assert refused(hs_verifier, token) == "Token not yet valid"


def test_wrong_key(hs_verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(), "another-secret-that-is-long-enough-for-hs256", algorithm="HS256")
    assert refused(hs_verifier, token) == "Token rejected"


def test_wrong_issuer(hs_verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(iss="evil-auth"), SECRET, algorithm="HS256")
    assert refused(hs_verifier, token) == "Token rejected"


def test_wrong_audience(hs_verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(aud="another-api"), SECRET, algorithm="HS256")
    assert refused(hs_verifier, token) == "Token rejected"


def test_configured_issuer_and_audience_are_the_ones_checked() -> None:
    # GIVEN a verifier configured for another issuer and audience
    verifier = TokenVerifier(
        Settings(jwt_secret=SECRET, session_secret=SESSION_SECRET, jwt_issuer="iss-b", jwt_audience="aud-b")
    )
    # THEN the defaults are refused and the configured values are accepted
    assert refused(verifier, jwt.encode(claims(), SECRET, algorithm="HS256")) == "Token rejected"
    assert verifier.verify(jwt.encode(claims(iss="iss-b", aud="aud-b"), SECRET, algorithm="HS256")).user_id


def test_alg_none(hs_verifier: TokenVerifier) -> None:
    # GIVEN an unsigned token (alg none), built by hand so no library refuses to make it
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    token = f"{header}.{b64(json.dumps(claims()).encode())}."
    assert refused(hs_verifier, token) == "Token algorithm not accepted"
    # AND the capitalised spelling some libraries accept is refused too
    header = b64(json.dumps({"alg": "None", "typ": "JWT"}).encode())
    assert refused(hs_verifier, f"{header}.{b64(json.dumps(claims()).encode())}.") == "Token algorithm not accepted"


def test_alg_none_via_pyjwt(hs_verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(), "", algorithm="none")
    assert refused(hs_verifier, token) == "Token algorithm not accepted"


def test_other_hmac_algorithm_is_refused(hs_verifier: TokenVerifier) -> None:
    # A valid HS512 signature with the right secret is still not the configured algorithm
    token = jwt.encode(claims(), SECRET, algorithm="HS512")
    assert refused(hs_verifier, token) == "Token algorithm not accepted"


def test_tampered_claims(hs_verifier: TokenVerifier) -> None:
    # GIVEN a valid token whose payload is swapped for one granting admin, signature kept
    header, _, signature = jwt.encode(claims(), SECRET, algorithm="HS256").split(".")
    forged_payload = b64(json.dumps(claims(permissions=["admin"], sub="someone-else")).encode())
    assert refused(hs_verifier, f"{header}.{forged_payload}.{signature}") == "Token rejected"


def test_tampered_signature(hs_verifier: TokenVerifier) -> None:
    header, payload, signature = jwt.encode(claims(), SECRET, algorithm="HS256").split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    assert refused(hs_verifier, f"{header}.{payload}.{flipped}") == "Token rejected"


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "a.b",
        "a.b.c",
        "....",
        "eyJ.eyJ.x",
        "Bearer x.y.z",
        "\u00e9.\u00e9.\u00e9",
        "\ud800.a.b",
        "eyJhbGciOiJIUzI1NiJ9.e30.\udfff",
    ],
)
def test_malformed_token(hs_verifier: TokenVerifier, token: str) -> None:
    assert refused(hs_verifier, token) in {"Malformed token", "Token rejected"}


def test_empty_and_oversized_tokens(hs_verifier: TokenVerifier) -> None:
    assert refused(hs_verifier, "") == "Missing or oversized token"
    assert refused(hs_verifier, "x" * 8193) == "Missing or oversized token"


@pytest.mark.parametrize("missing", ["sub", "exp", "iss", "aud"])
def test_missing_required_claim(hs_verifier: TokenVerifier, missing: str) -> None:
    token = jwt.encode(claims(**{missing: None}), SECRET, algorithm="HS256")
    assert refused(hs_verifier, token) == "Token rejected"


def test_missing_sub(hs_verifier: TokenVerifier) -> None:
    assert refused(hs_verifier, jwt.encode(claims(sub=None), SECRET, algorithm="HS256")) == "Token rejected"


def test_missing_exp(hs_verifier: TokenVerifier) -> None:
    assert refused(hs_verifier, jwt.encode(claims(exp=None), SECRET, algorithm="HS256")) == "Token rejected"


def test_empty_sub(hs_verifier: TokenVerifier) -> None:
    with pytest.raises(AuthError):
        hs_verifier.verify(jwt.encode(claims(sub=""), SECRET, algorithm="HS256"))


def test_unknown_permissions_are_dropped(hs_verifier: TokenVerifier) -> None:
    token = jwt.encode(
        claims(permissions=["read:alerts", "superuser", "read:weather", "rooms:send", "ADMIN"]),
        SECRET,
        algorithm="HS256",
    )
    assert hs_verifier.verify(token).permissions == frozenset({"read:alerts", "rooms:send"})


@pytest.mark.parametrize("permissions", ["admin", [1, 2], {"admin": True}, ["admin", None]])
def test_permissions_must_be_a_list_of_strings(hs_verifier: TokenVerifier, permissions: Any) -> None:
    token = jwt.encode(claims(permissions=permissions), SECRET, algorithm="HS256")
    assert "permissions" in refused(hs_verifier, token)


@pytest.mark.parametrize("level", ["gold", "PREMIUM", "", 3])
def test_bad_subscription_level(hs_verifier: TokenVerifier, level: Any) -> None:
    token = jwt.encode(claims(subscription_level=level), SECRET, algorithm="HS256")
    assert "subscription level" in refused(hs_verifier, token)


def test_bad_client_type(hs_verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(client_type="toaster"), SECRET, algorithm="HS256")
    assert "client type" in refused(hs_verifier, token)


def test_identity_from_claims_rejects_an_overlong_subject() -> None:
    with pytest.raises(AuthError):
        identity_from_claims(claims(sub="u" * 500))


# ---------------------------------------------------------------- RS256 through JWKS and algorithm confusion


def test_rs256_token_through_jwks(rs_verifier: TokenVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    # GIVEN an RS256 token signed by the key the JWKS URL publishes, THEN it is accepted
    identity = rs_verifier.verify(rs_token(rsa_key))
    assert identity.user_id == "user-42"
    assert identity.subscription_level == "basic"


def test_rs256_token_signed_by_another_key(rs_verifier: TokenVerifier) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert refused(rs_verifier, rs_token(other)) == "Token rejected"


def test_rs256_token_with_unknown_kid(rs_verifier: TokenVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "not-published"})
    assert refused(rs_verifier, token) == "Token rejected"


def test_rs256_expired_and_wrong_audience(rs_verifier: TokenVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    assert refused(rs_verifier, rs_token(rsa_key, exp=int(time.time()) - 60)) == "Token expired"
    assert refused(rs_verifier, rs_token(rsa_key, aud="elsewhere")) == "Token rejected"
    assert refused(rs_verifier, rs_token(rsa_key, iss="elsewhere")) == "Token rejected"


def test_hs256_signed_with_rsa_public_key_against_rs256_verifier(
    rs_verifier: TokenVerifier, rsa_key: rsa.RSAPrivateKey
) -> None:
    # GIVEN the classic confusion attack: HMAC keyed with the (public) RSA PEM, signed by hand
    # because PyJWT refuses to HMAC with a PEM key
    import hashlib
    import hmac

    pem = rsa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = (
        f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT', 'kid': KID}).encode())}.{b64(json.dumps(claims()).encode())}"
    )
    signature = b64(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())
    # THEN the RS256 verifier refuses it
    assert refused(rs_verifier, f"{signing_input}.{signature}") == "Token algorithm not accepted"


def test_rs256_token_against_hs256_verifier(hs_verifier: TokenVerifier, rsa_key: rsa.RSAPrivateKey) -> None:
    assert refused(hs_verifier, rs_token(rsa_key)) == "Token algorithm not accepted"


def test_alg_none_against_rs256_verifier(rs_verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(), "", algorithm="none", headers={"kid": KID})
    assert refused(rs_verifier, token) == "Token algorithm not accepted"


def test_rs256_settings_need_a_jwks_url() -> None:
    with pytest.raises(ValueError):
        Settings(jwt_algorithm="RS256", session_secret=SESSION_SECRET)


# ---------------------------------------------------------------- identity and authorizer context


def test_identity_round_trips_through_the_authorizer_context() -> None:
    identity = Identity(
        user_id="u-9",
        client_type="mobile",
        permissions=frozenset({"read:alerts", "rooms:join"}),
        subscription_level="premium",
        token_expires_at=1_900_000_000,
        token_issued_at=1_899_990_000,
    )
    context = identity.to_authorizer_context()
    assert all(isinstance(v, str | int | bool) for v in context.values())
    assert Identity.from_authorizer_context(context) == identity
    # API Gateway may hand numbers back as strings
    assert Identity.from_authorizer_context({k: str(v) for k, v in context.items()}) == identity


def test_admin_permission_implies_every_other() -> None:
    admin = Identity(user_id="a", permissions=frozenset({"admin"}))
    reader = Identity(user_id="r", permissions=frozenset({"read:alerts"}))
    assert admin.can(Permission.READ_PREDICTIONS)
    assert reader.can(Permission.READ_ALERTS)
    assert not reader.can(Permission.READ_PREDICTIONS)


def test_every_stream_type_has_its_read_permission() -> None:
    # GIVEN the protocol's stream types
    for stream_type in StreamType:
        # THEN each has one read permission, spelled as tokens carry it
        assert Permission.to_read(stream_type) == f"read:{stream_type.value}"
    assert set(ALL_PERMISSIONS) == {permission.value for permission in Permission}


def test_permissions_are_typed_and_unknown_ones_are_dropped() -> None:
    # WHEN the authorizer context carries a permission this server does not know
    identity = Identity.from_authorizer_context({"user_id": "u", "permissions": "read:alerts,launch:rockets"})
    # THEN the identity holds only typed, known permissions
    assert identity.permissions == frozenset({Permission.READ_ALERTS})
    assert all(isinstance(permission, Permission) for permission in identity.permissions)


# ---------------------------------------------------------------- session tokens


def test_session_token_round_trips() -> None:
    tokens = SessionTokens(SESSION_SECRET)
    session = Session("sid-1", "user-1", int(time.time()) + 60, token_id="jti-1")
    assert tokens.verify(tokens.issue(session)) == session
    # without a token id, each issue gets a fresh one
    fresh = tokens.verify(tokens.issue(Session("sid-1", "user-1", int(time.time()) + 60)))
    assert fresh.session_id == "sid-1" and fresh.token_id


def test_forged_session_token() -> None:
    # GIVEN a session token signed with another secret
    forged = SessionTokens("attacker-secret").issue(Session("sid-1", "user-1", int(time.time()) + 60))
    with pytest.raises(AuthError, match="rejected"):
        SessionTokens(SESSION_SECRET).verify(forged)


def test_tampered_session_token() -> None:
    # GIVEN a genuine session token whose claims are swapped for another user's, signature kept
    tokens = SessionTokens(SESSION_SECRET)
    header, _, signature = tokens.issue(Session("sid-1", "user-1", int(time.time()) + 60)).split(".")
    body = b64(json.dumps({"sid": "sid-1", "sub": "victim", "exp": int(time.time()) + 60}).encode())
    with pytest.raises(AuthError, match="rejected"):
        tokens.verify(f"{header}.{body}.{signature}")


def test_expired_session_token() -> None:
    # GIVEN a session token issued at 990 and expiring at 1000 by the clock the tokens were given
    now = [990.0]
    tokens = SessionTokens(SESSION_SECRET, clock=lambda: now[0])
    token = tokens.issue(Session("sid-1", "user-1", 1000))
    # WHEN it is verified when that clock reads 1001 THEN it is expired
    now[0] = 1001.0
    with pytest.raises(AuthError, match="expired"):
        tokens.verify(token)
    # AND that clock decides, not the machine's: at 999 the same token verifies
    now[0] = 999.0
    assert tokens.verify(token).session_id == "sid-1"


def test_a_session_token_issued_after_now_by_the_clock_is_rejected() -> None:
    # GIVEN a genuine session token issued at 2000 by the tokens' clock
    now = [2000.0]
    tokens = SessionTokens(SESSION_SECRET, clock=lambda: now[0])
    token = tokens.issue(Session("sid-1", "user-1", 3000))
    # WHEN it is presented while that clock reads 1999 THEN it is not accepted
    now[0] = 1999.0
    with pytest.raises(AuthError, match="rejected"):
        tokens.verify(token)
    # AND from its issue time on it is
    now[0] = 2000.0
    assert tokens.verify(token).session_id == "sid-1"


def test_access_token_is_not_a_session_token() -> None:
    # GIVEN a genuine access token signed with the same service secret
    with pytest.raises(AuthError):
        SessionTokens(SESSION_SECRET).verify(mint_token(SECRET, "user-1"))


def test_session_token_is_not_an_access_token(hs_verifier: TokenVerifier) -> None:
    session_token = SessionTokens(SESSION_SECRET).issue(Session("sid-1", "user-42", int(time.time()) + 60))
    with pytest.raises(AuthError):
        hs_verifier.verify(session_token)


def test_session_tokens_are_jwts_with_their_own_audience_and_a_jti() -> None:
    # WHEN a session token is issued
    token = SessionTokens(SESSION_SECRET).issue(Session("sid-1", "user-1", int(time.time()) + 60))
    # THEN it is a standard HS256 JWT for the session audience, naming the session and a unique token id
    claims = jwt.decode(token, SESSION_SECRET, algorithms=["HS256"], audience="quanttrade-session")
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert claims["sid"] == "sid-1" and claims["sub"] == "user-1"
    assert claims["iss"] == "quanttrade-websocket"
    assert len(claims["jti"]) >= 32
    again = SessionTokens(SESSION_SECRET).issue(Session("sid-1", "user-1", int(time.time()) + 60))
    assert (
        jwt.decode(again, SESSION_SECRET, algorithms=["HS256"], audience="quanttrade-session")["jti"] != claims["jti"]
    )


def test_a_jwt_with_the_session_key_but_the_access_audience_is_refused() -> None:
    # GIVEN an access token signed with the session key: the key alone does not make a session token
    with pytest.raises(AuthError):
        SessionTokens(SESSION_SECRET).verify(mint_token(SESSION_SECRET, "user-1"))


def test_a_session_token_needs_every_claim() -> None:
    now = int(time.time())
    base = {"iss": "quanttrade-websocket", "aud": "quanttrade-session", "sub": "u", "sid": "s", "exp": now + 60}
    for missing in ("sid", "sub", "exp", "aud", "iss"):
        claims_ = {k: v for k, v in {**base, "jti": "j"}.items() if k != missing}
        with pytest.raises(AuthError):
            SessionTokens(SESSION_SECRET).verify(jwt.encode(claims_, SESSION_SECRET, algorithm="HS256"))
    # ... and a jti: without one a token could not be spent
    with pytest.raises(AuthError):
        SessionTokens(SESSION_SECRET).verify(jwt.encode(base, SESSION_SECRET, algorithm="HS256"))


def test_session_tokens_refuse_other_algorithms() -> None:
    now = int(time.time())
    claims_: dict[str, Any] = {"iss": "quanttrade-websocket", "aud": "quanttrade-session", "sub": "u", "sid": "s"}
    claims_.update(jti="j", exp=now + 60)
    with pytest.raises(AuthError):
        SessionTokens(SESSION_SECRET).verify(jwt.encode(claims_, SESSION_SECRET, algorithm="HS512"))
    with pytest.raises(AuthError):
        SessionTokens(SESSION_SECRET).verify(jwt.encode(claims_, "", algorithm="none"))


# ---------------------------------------------------------------- keys: bounded age, rotation


class Versions:
    """A stand-in secret with version stages, counting reads."""

    def __init__(self, current: str, previous: str | None = None) -> None:
        self.stages = {"AWSCURRENT": current, "AWSPREVIOUS": previous}
        self.reads = 0

    def rotate(self, new: str) -> None:
        self.stages = {"AWSCURRENT": new, "AWSPREVIOUS": self.stages["AWSCURRENT"]}

    def __call__(self, stage: str) -> str | None:
        self.reads += 1
        return self.stages[stage]


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


OLD_KEY = "old-access-key-0123456789abcdef-0123456789abcdef"
NEW_KEY = "new-access-key-0123456789abcdef-0123456789abcdef"


def test_keys_are_read_again_once_older_than_the_cache_bound() -> None:
    # GIVEN a key cache of 300 s over a secret
    versions, clock = Versions(OLD_KEY), Monotonic()
    cache = KeyCache(versions, max_age_seconds=300, clock=clock)
    assert cache() == (OLD_KEY,)
    reads = versions.reads
    # WHEN the secret rotates
    versions.rotate(NEW_KEY)
    # THEN the cached keys serve until the bound, and are read again after it, current first
    clock.now += 299
    assert cache() == (OLD_KEY,) and versions.reads == reads
    clock.now += 1
    assert cache() == (NEW_KEY, OLD_KEY)
    assert versions.reads == reads + 2


def test_a_warm_verifier_picks_up_a_rotated_key_and_still_accepts_the_previous_one() -> None:
    # GIVEN a verifier reading its key through a cache, warm with the old key
    versions, clock = Versions(OLD_KEY), Monotonic()
    verifier = TokenVerifier(
        Settings(jwt_secret_arn="arn:key", session_secret=SESSION_SECRET),
        keys=KeyCache(versions, max_age_seconds=60, clock=clock),
    )
    assert verifier.verify(mint_token(OLD_KEY, "user-1")).user_id == "user-1"
    # WHEN the key rotates and the cache bound passes
    versions.rotate(NEW_KEY)
    clock.now += 60
    # THEN tokens signed with the new key verify, so do tokens signed just before the rotation
    assert verifier.verify(mint_token(NEW_KEY, "user-1")).user_id == "user-1"
    assert verifier.verify(mint_token(OLD_KEY, "user-2")).user_id == "user-2"
    # AND after a second rotation the oldest key is no longer accepted
    versions.rotate("third-access-key-0123456789abcdef-0123456789abcdef")
    clock.now += 60
    with pytest.raises(AuthError, match="rejected"):
        verifier.verify(mint_token(OLD_KEY, "user-1"))


def test_a_rotation_does_not_turn_other_refusals_into_retries() -> None:
    # GIVEN current and previous keys
    verifier = TokenVerifier(Settings(jwt_secret="x", session_secret=SESSION_SECRET), keys=lambda: (NEW_KEY, OLD_KEY))
    # THEN an expired token signed with either is refused as expired, and another key's as rejected
    with pytest.raises(AuthError, match="expired"):
        verifier.verify(mint_token(NEW_KEY, "u", expires_in=-60))
    with pytest.raises(AuthError, match="expired"):
        verifier.verify(mint_token(OLD_KEY, "u", expires_in=-60))
    with pytest.raises(AuthError, match="rejected"):
        verifier.verify(mint_token("a-third-key-0123456789abcdef-0123456789abcdef", "u"))


def test_session_tokens_sign_with_the_current_key_and_accept_the_previous() -> None:
    keys = [("session-new-0123456789abcdef-0123456789abcdef", "session-old-0123456789abcdef-0123456789ab")]
    tokens = SessionTokens(lambda: keys[0])
    issued = tokens.issue(Session("sid", "u", int(time.time()) + 60))
    jwt.decode(issued, keys[0][0], algorithms=["HS256"], audience="quanttrade-session")  # signed with the current
    before = SessionTokens(keys[0][1]).issue(Session("sid", "u", int(time.time()) + 60))
    assert tokens.verify(before).session_id == "sid"


def test_the_previous_version_is_optional_until_the_first_rotation() -> None:
    assert KeyCache(Versions(OLD_KEY, previous=None))() == (OLD_KEY,)
    # A secret without a current value is the service's fault, not the token's: no AuthError (no refusal)
    with pytest.raises(KeyUnavailable):
        KeyCache(lambda stage: None)()


def test_secrets_manager_versions_reads_each_stage(aws_secrets: Any) -> None:
    # GIVEN a secret in (moto's) Secrets Manager, rotated once
    client, arn = aws_secrets
    fetch = secrets_manager_versions(lambda: client, arn)
    assert fetch("AWSCURRENT") == "first" and fetch("AWSPREVIOUS") is None
    client.put_secret_value(SecretId=arn, SecretString="second")
    # THEN the stages are the new and the old value
    assert fetch("AWSCURRENT") == "second" and fetch("AWSPREVIOUS") == "first"


@pytest.fixture
def aws_secrets() -> Iterator[tuple[Any, str]]:
    import boto3
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("secretsmanager", region_name="us-east-1")
        arn = client.create_secret(Name="qt-key", SecretString="first")["ARN"]
        yield client, arn


def test_settings_need_a_session_key_of_its_own() -> None:
    with pytest.raises(ValueError, match="session tokens need a key of their own"):
        Settings(jwt_secret=SECRET)
    with pytest.raises(ValueError, match="must differ"):
        Settings(jwt_secret=SECRET, session_secret=SECRET)
    with pytest.raises(ValueError, match="HS256 access tokens need their key"):
        Settings(session_secret=SESSION_SECRET)
    # RS256 access tokens need no shared key; session tokens still have theirs
    Settings(jwt_algorithm="RS256", jwks_url="https://auth.example.com/jwks.json", session_secret_arn="arn:s")


@pytest.mark.parametrize(
    "token",
    [
        "",
        ".",
        "abc",
        "abc.",
        ".abc",
        "a.b.c",
        "\u00e9.\u00e9",
        "x.\u00ff\u00fe",
        "\x00.\x00",
        "\ud800.\ud800",
        "a.\udfff",
    ],
)
def test_malformed_session_tokens_are_refused_as_auth_errors(token: str) -> None:
    # GIVEN any garbage a client could put in `session_token`, THEN AuthError, never another exception
    with pytest.raises(AuthError):
        SessionTokens(SESSION_SECRET).verify(token)

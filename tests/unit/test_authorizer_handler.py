"""The $connect REQUEST authorizer Lambda: Allow + identity context, a Deny for a refused token (API Gateway's 403),
and a counted, raised failure only when the service itself is at fault."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from handlers import authorizer
from local.tokens import mint_token
from quanttrade_ws import runtime as runtime_module
from quanttrade_ws.auth import Identity, KeyUnavailable, TokenVerifier
from tests.jwks import serve_jwks
from tests.lambda_events import LambdaContext

SECRET = "authorizer-test-secret-0123456789abcdef"
METHOD_ARN = "arn:aws:execute-api:us-east-1:123456789012:abcdef1234/production/$connect"


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("QT_JWT_SECRET", SECRET)
    monkeypatch.setenv("QT_SESSION_SECRET", "authorizer-test-session-secret-0123456789")
    monkeypatch.setenv("QT_JWT_ALGORITHM", "HS256")
    monkeypatch.setenv("QT_JWT_ISSUER", "quanttrade-auth")
    monkeypatch.setenv("QT_JWT_AUDIENCE", "quanttrade-websocket")
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    runtime_module.runtime.cache_clear()
    yield
    runtime_module.runtime.cache_clear()


def connect_event(token: str | None, *, query: dict[str, str] | None = None) -> dict[str, Any]:
    """An API Gateway WebSocket REQUEST authorizer event for $connect."""
    parameters = dict(query or {})
    if token is not None:
        parameters["token"] = token
    return {
        "type": "REQUEST",
        "methodArn": METHOD_ARN,
        "headers": {"Host": "abcdef1234.execute-api.us-east-1.amazonaws.com", "Sec-WebSocket-Version": "13"},
        "multiValueHeaders": {},
        "queryStringParameters": parameters or None,
        "multiValueQueryStringParameters": {k: [v] for k, v in parameters.items()} or None,
        "stageVariables": {},
        "requestContext": {
            "routeKey": "$connect",
            "eventType": "CONNECT",
            "extendedRequestId": "ext-1",
            "requestTime": "01/Jan/2027:00:00:00 +0000",
            "messageDirection": "IN",
            "stage": "production",
            "connectedAt": 1_798_761_600_000,
            "requestTimeEpoch": 1_798_761_600_000,
            "identity": {"sourceIp": "203.0.113.7", "userAgent": "pytest"},
            "requestId": "req-abc",
            "domainName": "abcdef1234.execute-api.us-east-1.amazonaws.com",
            "connectionId": "conn-abc=",
            "apiId": "abcdef1234",
        },
    }


def invoke(event: dict[str, Any]) -> dict[str, Any]:
    return authorizer.handler(event, LambdaContext())


@pytest.fixture
def recorded_metrics(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the metrics the authorizer adds, in order."""
    names: list[str] = []
    monkeypatch.setattr(authorizer.metrics, "add_metric", lambda name, unit, value: names.append(name))
    return names


def unauthorized(event: dict[str, Any]) -> None:
    """A refusal: a Deny on the method ARN (API Gateway answers the handshake 403), never an exception,
    so Lambda counts no error and no alarm fires for a client's stale token."""
    result = invoke(event)
    [statement] = result["policyDocument"]["Statement"]
    assert statement == {"Action": "execute-api:Invoke", "Effect": "Deny", "Resource": [METHOD_ARN]}
    assert "context" not in result  # a refused caller's claims go nowhere


def test_good_token_is_allowed_with_identity_context() -> None:
    # GIVEN a valid token in ?token=
    token = mint_token(
        SECRET,
        "user-77",
        permissions=["read:market_data", "rooms:join", "not-a-permission"],
        subscription_level="basic",
        client_type="mobile",
    )
    # WHEN the authorizer runs
    result = invoke(connect_event(token))
    # THEN it allows $connect on the method ARN and passes the verified identity on
    assert result["principalId"] == "user-77"
    [statement] = result["policyDocument"]["Statement"]
    assert statement == {"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": [METHOD_ARN]}
    context = result["context"]
    assert all(isinstance(value, str | int | bool) for value in context.values())
    assert context["user_id"] == "user-77"
    assert context["subscription_level"] == "basic"
    assert context["client_type"] == "mobile"
    assert context["permissions"] == "read:market_data,rooms:join"
    assert context["token_expires_at"] > time.time()


def test_context_round_trips_through_identity() -> None:
    # GIVEN the context the authorizer returns, as the $connect handler receives it
    result = invoke(connect_event(mint_token(SECRET, "user-5", subscription_level="enterprise")))
    identity = Identity.from_authorizer_context(result["context"])
    # THEN it rebuilds the same identity the token carries
    assert identity.user_id == "user-5"
    assert identity.subscription_level == "enterprise"
    assert "admin" in identity.permissions
    assert identity.to_authorizer_context() == result["context"]


def test_a_refusal_is_counted_as_denied_not_as_a_failure(recorded_metrics: list[str]) -> None:
    # GIVEN an expired token WHEN the authorizer refuses it
    unauthorized(connect_event(mint_token(SECRET, "user-1", expires_in=-120)))
    # THEN it counts a denial, and nothing the failure alarm watches
    assert recorded_metrics == ["AuthorizerDenied"]


def test_an_unreachable_jwks_is_a_failure_counted_and_raised(
    monkeypatch: pytest.MonkeyPatch, recorded_metrics: list[str], rsa_key: Any
) -> None:
    # GIVEN an RS256 deployment whose identity provider cannot be reached (nothing listens on port 9)
    monkeypatch.setenv("QT_JWT_ALGORITHM", "RS256")
    monkeypatch.setenv("QT_JWKS_URL", "http://127.0.0.1:9/.well-known/jwks.json")
    runtime_module.runtime.cache_clear()
    # WHEN a client connects THEN the authorizer fails (API Gateway answers 500, the client may retry)
    with pytest.raises(KeyUnavailable):
        invoke(connect_event(rs256_token(rsa_key)))
    # AND counts the failure the on-call is paged for, not a denial
    assert recorded_metrics == ["AuthorizerFailures"]


def test_an_empty_signing_key_is_a_failure_not_a_refusal(
    monkeypatch: pytest.MonkeyPatch, recorded_metrics: list[str]
) -> None:
    # GIVEN a runtime whose key source yields nothing (a secret without a current value)
    runtime_module.runtime.cache_clear()
    verifier = TokenVerifier(runtime_module.runtime().settings, keys=lambda: ())
    monkeypatch.setattr(runtime_module.runtime(), "token_verifier", verifier)
    # WHEN a well-formed token arrives THEN the authorizer fails and counts it
    with pytest.raises(KeyUnavailable):
        invoke(connect_event(mint_token(SECRET, "user-1")))
    assert recorded_metrics == ["AuthorizerFailures"]


def test_missing_query_string_is_unauthorized() -> None:
    unauthorized(connect_event(None))


def test_missing_token_parameter_is_unauthorized() -> None:
    unauthorized(connect_event(None, query={"client": "web"}))


def test_empty_token_is_unauthorized() -> None:
    unauthorized(connect_event(""))


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        mint_token("another-secret-0123456789abcdef-xyz", "user-1"),
        mint_token(SECRET, "user-1", expires_in=-120),
        mint_token(SECRET, "user-1", issuer="someone-else"),
        mint_token(SECRET, "user-1", audience="another-api"),
        mint_token(SECRET, "user-1", not_before=int(time.time()) + 3600),
        jwt.encode({"sub": "user-1", "exp": int(time.time()) + 60}, "", algorithm="none"),
    ],
    ids=["garbage", "wrong-key", "expired", "wrong-issuer", "wrong-audience", "not-yet-valid", "alg-none"],
)
def test_bad_tokens_are_unauthorized(token: str) -> None:
    unauthorized(connect_event(token))


def test_authorizer_follows_the_configured_issuer(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a deployment configured for another issuer
    monkeypatch.setenv("QT_JWT_ISSUER", "corp-idp")
    runtime_module.runtime.cache_clear()
    # THEN the default issuer is refused and the configured one allowed
    unauthorized(connect_event(mint_token(SECRET, "user-1")))
    assert invoke(connect_event(mint_token(SECRET, "user-1", issuer="corp-idp")))["principalId"] == "user-1"


# ---------------------------------------------------------------- RS256 through a JWKS URL


@pytest.fixture(scope="module")
def rsa_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def jwks_url(rsa_key: Any) -> Iterator[str]:
    """The identity provider's JWKS, served on 127.0.0.1."""
    with serve_jwks(rsa_key.public_key(), "k1") as url:
        yield url


def rs256_token(key: Any, user_id: str = "user-rs", kid: str = "k1") -> str:
    now = int(time.time())
    claims = {
        "sub": user_id,
        "iat": now,
        "exp": now + 600,
        "iss": "quanttrade-auth",
        "aud": "quanttrade-websocket",
        "permissions": ["read:alerts"],
        "subscription_level": "free",
        "client_type": "web",
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


def test_rs256_deployment_allows_a_token_signed_by_the_published_key(
    monkeypatch: pytest.MonkeyPatch, jwks_url: str, rsa_key: Any
) -> None:
    # GIVEN the authorizer configured for RS256 against a JWKS URL
    monkeypatch.setenv("QT_JWT_ALGORITHM", "RS256")
    monkeypatch.setenv("QT_JWKS_URL", jwks_url)
    runtime_module.runtime.cache_clear()
    # THEN a token signed by the published key is allowed
    result = invoke(connect_event(rs256_token(rsa_key)))
    assert result["principalId"] == "user-rs"
    assert result["context"]["permissions"] == "read:alerts"


def test_rs256_deployment_refuses_hs256_and_foreign_keys(
    monkeypatch: pytest.MonkeyPatch, jwks_url: str, rsa_key: Any
) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    monkeypatch.setenv("QT_JWT_ALGORITHM", "RS256")
    monkeypatch.setenv("QT_JWKS_URL", jwks_url)
    runtime_module.runtime.cache_clear()
    # an HS256 token signed with the service secret (the HS/RS confusion the algorithm pin prevents)
    unauthorized(connect_event(mint_token(SECRET, "user-1")))
    # a token signed by a key the JWKS does not publish
    unauthorized(connect_event(rs256_token(rsa.generate_private_key(public_exponent=65537, key_size=2048))))
    # a token naming a key id the JWKS does not have
    unauthorized(connect_event(rs256_token(rsa_key, kid="other")))

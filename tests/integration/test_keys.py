"""The runtime's keys on AWS: Secrets Manager secrets (moto) read through a cache of bounded age."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import jwt
import pytest
from moto import mock_aws

from local.fakes import InMemoryGateway
from local.tokens import mint_token
from quanttrade_ws.auth import AuthError, Session
from quanttrade_ws.config import Settings
from quanttrade_ws.runtime import Runtime

FIRST = "first-access-key-0123456789abcdef-0123456789abcdef"
SECOND = "second-access-key-0123456789abcdef-0123456789abcdef"


@pytest.fixture
def secrets() -> Iterator[tuple[Any, str, str]]:
    with mock_aws():
        client = boto3.client("secretsmanager", region_name="us-east-1")
        access = client.create_secret(Name="qt-access", SecretString=FIRST)["ARN"]
        session = client.create_secret(Name="qt-session", SecretString="session-key-0123456789abcdef-0123456789")["ARN"]
        yield client, access, session


def runtime_for(access: str, session: str, cache_seconds: int) -> Runtime:
    settings = Settings(jwt_secret_arn=access, session_secret_arn=session, key_cache_seconds=cache_seconds)
    return Runtime(settings, dynamodb=boto3.client("dynamodb", region_name="us-east-1"), gateway=InMemoryGateway())


def test_a_warm_function_verifies_with_a_rotated_key_and_the_previous_one(secrets: tuple[Any, str, str]) -> None:
    # GIVEN a warm runtime that verified a token with the access key, its cache bound 0 s
    client, access, session = secrets
    warm = runtime_for(access, session, cache_seconds=0)
    assert warm.token_verifier.verify(mint_token(FIRST, "user-1")).user_id == "user-1"
    # WHEN the key is rotated in Secrets Manager
    client.put_secret_value(SecretId=access, SecretString=SECOND)
    # THEN the same warm runtime accepts tokens signed with the new key, and those signed just before
    assert warm.token_verifier.verify(mint_token(SECOND, "user-2")).user_id == "user-2"
    assert warm.token_verifier.verify(mint_token(FIRST, "user-3")).user_id == "user-3"


def test_within_the_cache_bound_the_key_is_not_read_again(secrets: tuple[Any, str, str]) -> None:
    client, access, session = secrets
    warm = runtime_for(access, session, cache_seconds=3600)
    assert warm.token_verifier.verify(mint_token(FIRST, "user-1")).user_id == "user-1"
    client.put_secret_value(SecretId=access, SecretString=SECOND)
    # Within the bound the cached (now previous) key still serves; the new one arrives with the next read.
    with pytest.raises(AuthError):
        warm.token_verifier.verify(mint_token(SECOND, "user-1"))


def test_session_tokens_use_the_session_secret_not_the_access_key(secrets: tuple[Any, str, str]) -> None:
    # GIVEN the runtime's session tokens
    client, access, session = secrets
    tokens = runtime_for(access, session, cache_seconds=300).service.session_tokens
    token = tokens.issue(Session("sid", "user-1", 2_000_000_000))
    # THEN the session secret verifies them, the access key does not
    session_key = client.get_secret_value(SecretId=session)["SecretString"]
    assert jwt.decode(token, session_key, algorithms=["HS256"], audience="quanttrade-session")["sid"] == "sid"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, FIRST, algorithms=["HS256"], audience="quanttrade-session")
    assert tokens.verify(token).session_id == "sid"

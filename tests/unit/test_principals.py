"""The principals registry the AWS front door and the gateway share."""

from __future__ import annotations

import pytest

from local.iam import Decision, PolicyError
from local.principals import ADMIN_CREDENTIALS, Principals
from local.sigv4 import Credentials

ALLOW_ALL_SQS = {"Statement": [{"Effect": "Allow", "Action": "sqs:*", "Resource": "*"}]}


def test_a_function_is_an_assumed_role_with_temporary_keys_of_its_own() -> None:
    # GIVEN two functions registered from their roles' policies
    principals = Principals("123456789012")
    fanout = principals.register_function("quanttrade-fanout", "FanoutRole", [ALLOW_ALL_SQS])
    sweeper = principals.register_function("quanttrade-sweeper", "SweeperRole", [ALLOW_ALL_SQS])
    # THEN each has STS-shaped keys, a session token, and the ARNs IAM would see
    assert fanout.credentials.access_key_id.startswith("ASIA") and len(fanout.credentials.access_key_id) == 20
    assert fanout.credentials.session_token
    assert fanout.credentials != sweeper.credentials
    assert fanout.arn == "arn:aws:sts::123456789012:assumed-role/FanoutRole/quanttrade-fanout"
    assert fanout.condition_keys() == {
        "aws:PrincipalArn": "arn:aws:iam::123456789012:role/FanoutRole",
        "aws:PrincipalAccount": "123456789012",
    }
    # AND the registry finds each by its key, the administrator by the development keys
    assert principals.get(fanout.credentials.access_key_id) is fanout
    assert principals.credentials(ADMIN_CREDENTIALS.access_key_id) == ADMIN_CREDENTIALS
    assert principals.get("AKIDNOBODY") is None
    assert principals.functions() == [fanout, sweeper]
    # AND its Lambda credential variables are its own keys and token
    assert fanout.environment() == {
        "AWS_ACCESS_KEY_ID": fanout.credentials.access_key_id,
        "AWS_SECRET_ACCESS_KEY": fanout.credentials.secret_key,
        "AWS_SESSION_TOKEN": fanout.credentials.session_token,
    }
    assert "AWS_SESSION_TOKEN" not in principals.admin.environment()


def test_the_administrator_may_do_anything_and_a_function_only_what_its_role_allows() -> None:
    principals = Principals("123456789012")
    function = principals.register_function("fn", "Role", [ALLOW_ALL_SQS])
    assert principals.admin.decide("dynamodb:DeleteTable", "*") is Decision.ALLOW
    assert function.decide("sqs:SendMessage", "arn:aws:sqs:us-east-1:123456789012:q") is Decision.ALLOW
    assert function.decide("dynamodb:GetItem", "arn:aws:dynamodb:us-east-1:123456789012:table/t") is (
        Decision.IMPLICIT_DENY
    )


def test_registration_refuses_invalid_policies_and_reused_keys() -> None:
    principals = Principals("123456789012")
    with pytest.raises(PolicyError, match="Effect"):
        principals.register_function("fn", "Role", [{"Statement": [{"Action": "*", "Resource": "*"}]}])
    user = principals.register_user("operator", Credentials("AKIDOPERATOR", "s"), [ALLOW_ALL_SQS])
    assert user.arn == "arn:aws:iam::123456789012:user/operator"
    assert user.condition_keys()["aws:PrincipalArn"] == user.arn
    with pytest.raises(ValueError, match="already registered"):
        principals.register_user("again", Credentials("AKIDOPERATOR", "t"), [ALLOW_ALL_SQS])
    with pytest.raises(ValueError, match="already registered"):
        principals.register_user("admin-twin", ADMIN_CREDENTIALS, [ALLOW_ALL_SQS])

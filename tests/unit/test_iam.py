"""The IAM identity-policy evaluator: AWS's matching and decision rules."""

from __future__ import annotations

from typing import Any

import pytest

from local.iam import Decision, PolicyError, PolicySet, evaluate

ACCOUNT = "123456789012"
TABLE = f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/Connections"
INDEX = f"{TABLE}/index/byUser"
OTHER_TABLE = f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/Subscriptions"
QUEUE = f"arn:aws:sqs:us-east-1:{ACCOUNT}:fanout"
SECRET = f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:jwt-AbC123"


def allow(action: Any, resource: Any = "*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def deny(action: Any, resource: Any = "*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Deny", "Action": action, "Resource": resource, **extra}


def policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def decide(statements: list[dict[str, Any]], action: str, resource: str, **context: Any) -> Decision:
    return evaluate([policy(*statements)], action, resource, context)


def test_nothing_allows_by_default() -> None:
    assert decide([allow("sqs:SendMessage", QUEUE)], "dynamodb:GetItem", TABLE) is Decision.IMPLICIT_DENY
    assert evaluate([], "dynamodb:GetItem", TABLE) is Decision.IMPLICIT_DENY


def test_a_single_statement_object_is_accepted_as_cloudformation_renders_it() -> None:
    document = {"Version": "2012-10-17", "Statement": allow("dynamodb:GetItem", TABLE)}
    assert evaluate([document], "dynamodb:GetItem", TABLE) is Decision.ALLOW


def test_actions_match_case_insensitively_with_wildcards() -> None:
    statements = [allow(["dynamodb:Get*", "dynamodb:BatchGetItem", "sqs:?endMessage"], TABLE)]
    assert decide(statements, "dynamodb:GetItem", TABLE) is Decision.ALLOW
    assert decide(statements, "DynamoDB:getitem", TABLE) is Decision.ALLOW
    assert decide(statements, "dynamodb:GetRecords", TABLE) is Decision.ALLOW
    assert decide(statements, "dynamodb:PutItem", TABLE) is Decision.IMPLICIT_DENY
    assert decide(statements, "sqs:SendMessage", TABLE) is Decision.ALLOW
    assert decide(statements, "sqs:SendMessageBatch", TABLE) is Decision.IMPLICIT_DENY
    assert decide([allow("*", TABLE)], "anything:AtAll", TABLE) is Decision.ALLOW


def test_resources_match_case_sensitively_and_the_table_does_not_cover_its_indexes() -> None:
    statements = [allow("dynamodb:Query", TABLE)]
    assert decide(statements, "dynamodb:Query", TABLE) is Decision.ALLOW
    assert decide(statements, "dynamodb:Query", TABLE.replace("Connections", "connections")) is Decision.IMPLICIT_DENY
    assert decide(statements, "dynamodb:Query", INDEX) is Decision.IMPLICIT_DENY
    # CDK's grant pattern: the table and "<table>/index/*"
    granted = [allow("dynamodb:Query", [TABLE, f"{TABLE}/index/*"])]
    assert decide(granted, "dynamodb:Query", INDEX) is Decision.ALLOW
    assert decide(granted, "dynamodb:Query", OTHER_TABLE) is Decision.IMPLICIT_DENY


def test_resource_wildcards_span_segments_and_question_mark_is_one_character() -> None:
    assert (
        decide([allow("dynamodb:*", "arn:aws:dynamodb:*:*:table/Conn*")], "dynamodb:PutItem", INDEX) is Decision.ALLOW
    )
    secret_pattern = f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:jwt-??????"
    statements = [allow("secretsmanager:GetSecretValue", secret_pattern)]
    assert decide(statements, "secretsmanager:GetSecretValue", SECRET) is Decision.ALLOW
    assert decide(statements, "secretsmanager:GetSecretValue", SECRET + "x") is Decision.IMPLICIT_DENY


def test_an_explicit_deny_wins_over_any_allow_in_any_policy() -> None:
    documents = [policy(allow("dynamodb:*", "*")), policy(deny("dynamodb:DeleteItem", TABLE))]
    assert evaluate(documents, "dynamodb:DeleteItem", TABLE) is Decision.EXPLICIT_DENY
    assert evaluate(documents, "dynamodb:DeleteItem", OTHER_TABLE) is Decision.ALLOW
    assert evaluate(documents, "dynamodb:PutItem", TABLE) is Decision.ALLOW


def test_not_action_and_not_resource() -> None:
    statements = [{"Effect": "Allow", "NotAction": "dynamodb:Delete*", "Resource": TABLE}]
    assert decide(statements, "dynamodb:PutItem", TABLE) is Decision.ALLOW
    assert decide(statements, "dynamodb:DeleteItem", TABLE) is Decision.IMPLICIT_DENY
    fenced = [allow("dynamodb:*"), {"Effect": "Deny", "Action": "dynamodb:*", "NotResource": [TABLE, f"{TABLE}/*"]}]
    assert decide(fenced, "dynamodb:GetItem", INDEX) is Decision.ALLOW
    assert decide(fenced, "dynamodb:GetItem", OTHER_TABLE) is Decision.EXPLICIT_DENY


def test_string_conditions() -> None:
    statements = [allow("sqs:SendMessage", QUEUE, Condition={"StringEquals": {"aws:RequestedRegion": "us-east-1"}})]
    assert decide(statements, "sqs:SendMessage", QUEUE, **{"aws:RequestedRegion": "us-east-1"}) is Decision.ALLOW
    assert (
        decide(statements, "sqs:SendMessage", QUEUE, **{"aws:RequestedRegion": "eu-west-1"}) is Decision.IMPLICIT_DENY
    )
    # a key the context lacks fails a positive operator
    assert decide(statements, "sqs:SendMessage", QUEUE) is Decision.IMPLICIT_DENY
    # condition key names are case-insensitive, values are not (except the IgnoreCase operators)
    assert decide(statements, "sqs:SendMessage", QUEUE, **{"AWS:requestedregion": "us-east-1"}) is Decision.ALLOW
    assert (
        decide(statements, "sqs:SendMessage", QUEUE, **{"aws:RequestedRegion": "US-EAST-1"}) is Decision.IMPLICIT_DENY
    )
    ignore_case = [allow("sqs:*", QUEUE, Condition={"StringEqualsIgnoreCase": {"k": "ABC"}})]
    assert decide(ignore_case, "sqs:SendMessage", QUEUE, k="abc") is Decision.ALLOW
    like = [allow("sqs:*", QUEUE, Condition={"StringLike": {"k": ["svc-*", "other"]}})]
    assert decide(like, "sqs:SendMessage", QUEUE, k="svc-fanout") is Decision.ALLOW
    assert decide(like, "sqs:SendMessage", QUEUE, k="other") is Decision.ALLOW
    assert decide(like, "sqs:SendMessage", QUEUE, k="svc") is Decision.IMPLICIT_DENY


def test_negated_operators_hold_for_a_missing_key_unless_if_exists_is_not_used() -> None:
    guard = [deny("dynamodb:*", "*", Condition={"StringNotEquals": {"aws:RequestedRegion": "us-east-1"}}), allow("*")]
    assert decide(guard, "dynamodb:GetItem", TABLE, **{"aws:RequestedRegion": "us-east-1"}) is Decision.ALLOW
    assert decide(guard, "dynamodb:GetItem", TABLE, **{"aws:RequestedRegion": "eu-west-1"}) is Decision.EXPLICIT_DENY
    assert decide(guard, "dynamodb:GetItem", TABLE) is Decision.EXPLICIT_DENY
    if_exists = [allow("sqs:*", QUEUE, Condition={"StringEqualsIfExists": {"k": "v"}})]
    assert decide(if_exists, "sqs:SendMessage", QUEUE) is Decision.ALLOW
    assert decide(if_exists, "sqs:SendMessage", QUEUE, k="w") is Decision.IMPLICIT_DENY


def test_arn_conditions_compare_part_by_part() -> None:
    statements = [
        allow("sqs:SendMessage", QUEUE, Condition={"ArnLike": {"aws:SourceArn": "arn:aws:events:*:*:rule/*"}})
    ]
    rule = f"arn:aws:events:us-east-1:{ACCOUNT}:rule/Prices"
    assert decide(statements, "sqs:SendMessage", QUEUE, **{"aws:SourceArn": rule}) is Decision.ALLOW
    # a wildcard stays inside its part: "*" in the region part does not swallow the account's colon
    narrow = [allow("sqs:*", QUEUE, Condition={"ArnLike": {"aws:SourceArn": "arn:aws:events:*:rule/*"}})]
    assert decide(narrow, "sqs:SendMessage", QUEUE, **{"aws:SourceArn": rule}) is Decision.IMPLICIT_DENY
    equals = [allow("sqs:*", QUEUE, Condition={"ArnEquals": {"aws:SourceArn": rule}})]
    assert decide(equals, "sqs:SendMessage", QUEUE, **{"aws:SourceArn": rule}) is Decision.ALLOW
    assert decide(equals, "sqs:SendMessage", QUEUE, **{"aws:SourceArn": rule + "2"}) is Decision.IMPLICIT_DENY


def test_bool_numeric_date_ip_and_null_conditions() -> None:
    secure = [deny("*", "*", Condition={"Bool": {"aws:SecureTransport": "false"}}), allow("*")]
    assert decide(secure, "sqs:SendMessage", QUEUE, **{"aws:SecureTransport": False}) is Decision.EXPLICIT_DENY
    assert decide(secure, "sqs:SendMessage", QUEUE, **{"aws:SecureTransport": "true"}) is Decision.ALLOW
    numeric = [allow("dynamodb:Query", TABLE, Condition={"NumericLessThan": {"dynamodb:Limit": 100}})]
    assert decide(numeric, "dynamodb:Query", TABLE, **{"dynamodb:Limit": 99}) is Decision.ALLOW
    assert decide(numeric, "dynamodb:Query", TABLE, **{"dynamodb:Limit": "100"}) is Decision.IMPLICIT_DENY
    assert decide(numeric, "dynamodb:Query", TABLE, **{"dynamodb:Limit": "many"}) is Decision.IMPLICIT_DENY
    dated = [allow("*", "*", Condition={"DateLessThan": {"aws:CurrentTime": "2030-01-01T00:00:00Z"}})]
    assert decide(dated, "sqs:SendMessage", QUEUE, **{"aws:CurrentTime": "2029-12-31T23:59:59Z"}) is Decision.ALLOW
    assert (
        decide(dated, "sqs:SendMessage", QUEUE, **{"aws:CurrentTime": "2030-01-01T00:00:01Z"}) is Decision.IMPLICIT_DENY
    )
    ip = [allow("*", "*", Condition={"IpAddress": {"aws:SourceIp": "127.0.0.0/8"}})]
    assert decide(ip, "sqs:SendMessage", QUEUE, **{"aws:SourceIp": "127.0.0.1"}) is Decision.ALLOW
    assert decide(ip, "sqs:SendMessage", QUEUE, **{"aws:SourceIp": "10.0.0.1"}) is Decision.IMPLICIT_DENY
    null = [allow("*", "*", Condition={"Null": {"aws:TokenIssueTime": "false"}})]
    assert decide(null, "sqs:SendMessage", QUEUE, **{"aws:TokenIssueTime": "x"}) is Decision.ALLOW
    assert decide(null, "sqs:SendMessage", QUEUE) is Decision.IMPLICIT_DENY


def test_every_operator_and_every_key_must_hold() -> None:
    statements = [
        allow(
            "dynamodb:Query",
            TABLE,
            Condition={
                "StringEquals": {"aws:RequestedRegion": "us-east-1", "aws:PrincipalAccount": ACCOUNT},
                "Bool": {"aws:SecureTransport": "false"},
            },
        )
    ]
    full = {"aws:RequestedRegion": "us-east-1", "aws:PrincipalAccount": ACCOUNT, "aws:SecureTransport": "false"}
    assert decide(statements, "dynamodb:Query", TABLE, **full) is Decision.ALLOW
    for key in full:
        partial = {name: value for name, value in full.items() if name != key}
        assert decide(statements, "dynamodb:Query", TABLE, **partial) is Decision.IMPLICIT_DENY, key


def test_set_qualifiers_on_multivalued_keys() -> None:
    any_value = [allow("dynamodb:*", TABLE, Condition={"ForAnyValue:StringEquals": {"dynamodb:Attributes": ["a"]}})]
    assert decide(any_value, "dynamodb:GetItem", TABLE, **{"dynamodb:Attributes": ["b", "a"]}) is Decision.ALLOW
    assert decide(any_value, "dynamodb:GetItem", TABLE, **{"dynamodb:Attributes": ["b"]}) is Decision.IMPLICIT_DENY
    all_values = [
        allow("dynamodb:*", TABLE, Condition={"ForAllValues:StringEquals": {"dynamodb:Attributes": ["a", "b"]}})
    ]
    assert decide(all_values, "dynamodb:GetItem", TABLE, **{"dynamodb:Attributes": ["a", "b"]}) is Decision.ALLOW
    assert (
        decide(all_values, "dynamodb:GetItem", TABLE, **{"dynamodb:Attributes": ["a", "c"]}) is Decision.IMPLICIT_DENY
    )
    # vacuously true with no values, as on AWS (which is why AWS warns about ForAllValues with Allow)
    assert decide(all_values, "dynamodb:GetItem", TABLE) is Decision.ALLOW


def test_policy_variables_in_resources() -> None:
    statements = [allow("sqs:*", f"arn:aws:sqs:us-east-1:{ACCOUNT}:${{aws:username}}-*")]
    assert decide(statements, "sqs:SendMessage", QUEUE.replace("fanout", "alice-q"), **{"aws:username": "alice"}) is (
        Decision.ALLOW
    )
    assert decide(statements, "sqs:SendMessage", QUEUE.replace("fanout", "bob-q"), **{"aws:username": "alice"}) is (
        Decision.IMPLICIT_DENY
    )
    # without the variable in the context, the statement does not match
    assert decide(statements, "sqs:SendMessage", QUEUE.replace("fanout", "alice-q")) is Decision.IMPLICIT_DENY
    literal_star = [allow("sqs:*", f"arn:aws:sqs:us-east-1:{ACCOUNT}:a${{*}}b")]
    assert decide(literal_star, "sqs:SendMessage", f"arn:aws:sqs:us-east-1:{ACCOUNT}:a*b") is Decision.ALLOW
    assert decide(literal_star, "sqs:SendMessage", f"arn:aws:sqs:us-east-1:{ACCOUNT}:axb") is Decision.IMPLICIT_DENY


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        ({"Statement": []}, "non-empty list"),
        ({"Statement": [{"Effect": "Maybe", "Action": "*", "Resource": "*"}]}, "Effect"),
        ({"Statement": [{"Effect": "Allow", "Resource": "*"}]}, "exactly one of Action and NotAction"),
        ({"Statement": [{"Effect": "Allow", "Action": "*", "NotAction": "x:y", "Resource": "*"}]}, "exactly one"),
        ({"Statement": [{"Effect": "Allow", "Action": "*"}]}, "exactly one of Resource and NotResource"),
        ({"Statement": [{"Effect": "Allow", "Action": "GetItem", "Resource": "*"}]}, "service:Action"),
        ({"Statement": [allow("*", {"Fn::GetAtt": ["Table", "Arn"]})]}, "unresolved intrinsic"),
        ({"Statement": [allow("*", "*", Condition={"StringSorta": {"k": "v"}})]}, "unsupported condition operator"),
        ({"Statement": [allow("*", "*", Condition={"NumericLessThan": {"k": "ten"}})]}, "not a valid value"),
        ({"Statement": [allow("*", "*", Principal="*")]}, "resource-based"),
    ],
)
def test_invalid_documents_are_refused_when_parsed(document: dict[str, Any], complaint: str) -> None:
    with pytest.raises(PolicyError, match=complaint):
        PolicySet.parse([document])

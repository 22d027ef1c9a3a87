"""The AWS front door in front of moto: SigV4, IAM per resource, AWS's error shapes, injected faults.

Real boto3 clients sign real requests to a real front door on a free port,
which forwards to moto in server mode (in a thread here).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from local.aws_front_door.faults import FaultInjector
from local.aws_front_door.parsed_request import ParsedRequest
from local.aws_front_door.server import AwsFrontDoor
from local.moto_server import MotoServer
from local.principals import Principal, Principals
from local.sigv4 import Credentials, sign_headers

REGION = "us-east-1"
ACCOUNT = "123456789012"
TABLE_ARN = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/Connections"
OTHER_ARN = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/Audit"

FUNCTION_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query"],
            "Resource": [TABLE_ARN, f"{TABLE_ARN}/index/byUser"],
        },
        {"Effect": "Allow", "Action": "dynamodb:ConditionCheckItem", "Resource": TABLE_ARN},
        {"Effect": "Allow", "Action": "dynamodb:BatchWriteItem", "Resource": TABLE_ARN},
        {
            "Effect": "Allow",
            "Action": ["sqs:SendMessage", "sqs:ReceiveMessage"],
            "Resource": f"arn:aws:sqs:{REGION}:{ACCOUNT}:fanout",
        },
        {
            "Effect": "Allow",
            "Action": "events:PutEvents",
            "Resource": f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/qt",
        },
        {
            "Effect": "Allow",
            "Action": "secretsmanager:GetSecretValue",
            "Resource": f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:jwt-??????",
        },
    ],
}


class World:
    def __init__(self, moto: MotoServer, door: AwsFrontDoor, function: Principal) -> None:
        self.moto = moto
        self.door = door
        self.function = function

    def client(self, service: str, credentials: Credentials | None = None, **config: Any) -> Any:
        credentials = credentials or self.function.credentials
        make: Any = boto3.client  # any service by name: the stubs only type literal names
        return make(
            service,
            region_name=REGION,
            endpoint_url=self.door.endpoint_url,
            aws_access_key_id=credentials.access_key_id,
            aws_secret_access_key=credentials.secret_key,
            aws_session_token=credentials.session_token,
            config=Config(retries={"total_max_attempts": 1}, **config),
        )

    def admin(self, service: str) -> Any:
        return self.client(service, self.door.principals.admin.credentials)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    moto = MotoServer(port=0, mode="thread", region=REGION).start()
    principals = Principals(ACCOUNT)
    function = principals.register_function("quanttrade-fanout", "FanoutRole", [FUNCTION_POLICY])
    door = AwsFrontDoor(moto.endpoint_url, principals, region=REGION).start()
    built = World(moto, door, function)
    dynamodb = built.admin("dynamodb")
    for name in ("Connections", "Audit"):
        dynamodb.create_table(
            TableName=name,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "user", "AttributeType": "S"},
            ],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": index,
                    "KeySchema": [{"AttributeName": "user", "KeyType": "HASH"}],
                    "Projection": {"ProjectionType": "ALL"},
                }
                for index in ("byUser", "byOther")
            ],
            BillingMode="PAY_PER_REQUEST",
        )
    sqs = built.admin("sqs")
    for name in ("fanout", "other"):
        sqs.create_queue(QueueName=name)
    built.admin("events").create_event_bus(Name="qt")
    built.admin("secretsmanager").create_secret(Name="jwt", SecretString="s3cret")
    built.admin("secretsmanager").create_secret(Name="jwt-other-name", SecretString="nope")
    yield built
    door.stop()
    moto.stop()


def error_of(call: Any, **params: Any) -> dict[str, Any]:
    with pytest.raises(ClientError) as raised:
        call(**params)
    return dict(raised.value.response)


def queue_url(world: World, name: str) -> str:
    return f"{world.door.endpoint_url}/{ACCOUNT}/{name}"


def test_the_administrator_passes_and_a_function_gets_what_its_role_allows(world: World) -> None:
    dynamodb = world.client("dynamodb")
    dynamodb.put_item(TableName="Connections", Item={"pk": {"S": "c1"}, "user": {"S": "u1"}})
    assert dynamodb.get_item(TableName="Connections", Key={"pk": {"S": "c1"}})["Item"]["user"] == {"S": "u1"}


def test_a_write_to_a_table_the_role_does_not_name_is_access_denied_in_dynamodbs_shape(world: World) -> None:
    # WHEN the function writes to a table outside its policy
    response = error_of(world.client("dynamodb").put_item, TableName="Audit", Item={"pk": {"S": "x"}})
    # THEN DynamoDB's AccessDeniedException with AWS's message, status 400
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert response["Error"]["Code"] == "AccessDeniedException"
    assert response["Error"]["Message"] == (
        f"User: arn:aws:sts::{ACCOUNT}:assumed-role/FanoutRole/quanttrade-fanout is not authorized to perform: "
        f"dynamodb:PutItem on resource: {OTHER_ARN} because no identity-based policy allows the dynamodb:PutItem action"
    )
    # AND nothing reached moto
    assert "Item" not in world.admin("dynamodb").get_item(TableName="Audit", Key={"pk": {"S": "x"}})
    assert world.door.denied["quanttrade-fanout"] >= 1


def test_queries_are_authorised_on_the_index_arn(world: World) -> None:
    dynamodb = world.client("dynamodb")
    query = {"TableName": "Connections", "KeyConditionExpression": "#u = :u"}
    names = {"ExpressionAttributeNames": {"#u": "user"}, "ExpressionAttributeValues": {":u": {"S": "u1"}}}
    assert dynamodb.query(IndexName="byUser", **query, **names)["Count"] >= 0
    denied = error_of(dynamodb.query, IndexName="byOther", **query, **names)
    assert f"on resource: {TABLE_ARN}/index/byOther" in denied["Error"]["Message"]


def test_transactions_are_authorised_item_by_item(world: World) -> None:
    dynamodb = world.client("dynamodb")
    allowed = [
        {"Put": {"TableName": "Connections", "Item": {"pk": {"S": "t1"}}}},
        {
            "ConditionCheck": {
                "TableName": "Connections",
                "Key": {"pk": {"S": "c1"}},
                "ConditionExpression": "attribute_exists(pk)",
            }
        },
    ]
    dynamodb.transact_write_items(TransactItems=allowed)
    # WHEN one item of the transaction deletes from the table the role may only read... not even that here
    denied = error_of(
        dynamodb.transact_write_items,
        TransactItems=[*allowed, {"Delete": {"TableName": "Connections", "Key": {"pk": {"S": "t1"}}}}],
    )
    # THEN the DeleteItem of that item is what is named
    assert f"dynamodb:DeleteItem on resource: {TABLE_ARN}" in denied["Error"]["Message"]
    # AND a batch is authorised per table
    batch = error_of(
        dynamodb.batch_write_item,
        RequestItems={
            "Connections": [{"PutRequest": {"Item": {"pk": {"S": "b1"}}}}],
            "Audit": [{"PutRequest": {"Item": {"pk": {"S": "b2"}}}}],
        },
    )
    assert f"dynamodb:BatchWriteItem on resource: {OTHER_ARN}" in batch["Error"]["Message"]


def test_sqs_json_protocol_per_queue_with_batches_as_their_single_action(world: World) -> None:
    sqs = world.client("sqs")
    sqs.send_message(QueueUrl=queue_url(world, "fanout"), MessageBody="one")
    batch = sqs.send_message_batch(QueueUrl=queue_url(world, "fanout"), Entries=[{"Id": "1", "MessageBody": "two"}])
    assert [entry["Id"] for entry in batch["Successful"]] == ["1"]
    denied = error_of(
        sqs.send_message_batch, QueueUrl=queue_url(world, "other"), Entries=[{"Id": "1", "MessageBody": "x"}]
    )
    assert denied["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert denied["Error"]["Code"] == "AccessDenied"
    assert f"sqs:SendMessage on resource: arn:aws:sqs:{REGION}:{ACCOUNT}:other" in denied["Error"]["Message"]


def query_protocol_post(world: World, credentials: Credentials, form: str) -> tuple[int, str]:
    url = world.door.endpoint_url + "/"
    body = form.encode()
    headers = sign_headers(
        "POST", url, credentials, service="sqs", region=REGION, body=body,
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )  # fmt: skip
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_sqs_query_protocol_is_authorised_and_refused_in_xml(world: World) -> None:
    other = f"QueueUrl={queue_url(world, 'other')}&MessageBody=x&Action=SendMessage&Version=2012-11-05"
    status, text = query_protocol_post(world, world.function.credentials, other)
    assert status == 403
    assert "<Code>AccessDenied</Code>" in text and f"arn:aws:sqs:{REGION}:{ACCOUNT}:other" in text
    mine = other.replace("other", "fanout")
    status, text = query_protocol_post(world, world.function.credentials, mine)
    assert status == 200, text


def test_put_events_is_authorised_per_bus_with_default_when_absent(world: World) -> None:
    events = world.client("events")
    entry = {"Source": "qt.test", "DetailType": "Tick", "Detail": "{}"}
    assert events.put_events(Entries=[{**entry, "EventBusName": "qt"}])["FailedEntryCount"] == 0
    denied = error_of(events.put_events, Entries=[{**entry, "EventBusName": "qt"}, entry])
    assert denied["Error"]["Code"] == "AccessDeniedException"
    assert f"on resource: arn:aws:events:{REGION}:{ACCOUNT}:event-bus/default" in denied["Error"]["Message"]


def test_secrets_named_by_name_are_authorised_on_their_suffixed_arn(world: World) -> None:
    secrets = world.client("secretsmanager")
    assert secrets.get_secret_value(SecretId="jwt")["SecretString"] == "s3cret"
    denied = error_of(secrets.get_secret_value, SecretId="jwt-other-name")
    assert denied["Error"]["Code"] == "AccessDeniedException"
    assert ":secret:jwt-other-name-" in denied["Error"]["Message"]


def test_unsigned_forged_and_unknown_key_requests_are_refused_as_aws_does(world: World) -> None:
    unsigned = error_of(world.client("dynamodb", signature_version=botocore_unsigned()).list_tables)
    assert unsigned["Error"]["Code"] == "MissingAuthenticationTokenException"
    wrong_secret = Credentials(
        world.function.credentials.access_key_id, "wrong", world.function.credentials.session_token
    )
    forged = error_of(world.client("dynamodb", wrong_secret).get_item, TableName="Connections", Key={"pk": {"S": "c1"}})
    assert forged["Error"]["Code"] == "InvalidSignatureException"
    stranger = error_of(
        world.client("sqs", Credentials("AKIDSTRANGER", "x")).send_message,
        QueueUrl=queue_url(world, "fanout"),
        MessageBody="x",
    )
    assert stranger["Error"]["Code"] == "InvalidClientTokenId"


def botocore_unsigned() -> Any:
    from botocore import UNSIGNED

    return UNSIGNED


def test_operations_the_door_cannot_place_are_refused_to_functions_only(world: World) -> None:
    # GIVEN a service the door does not parse, and a DynamoDB operation whose resources it cannot derive
    denied = error_of(world.client("sts").get_caller_identity)
    assert denied["Error"]["Code"] == "UnknownOperationException"
    partiql = error_of(world.client("dynamodb").execute_statement, Statement='SELECT * FROM "Connections"')
    # THEN a function is refused (fail closed), saying why
    assert partiql["Error"]["Code"] == "AccessDeniedException"
    assert "dynamodb:ExecuteStatement" in partiql["Error"]["Message"]
    assert "fail closed" in partiql["Error"]["Message"]
    # AND the local administrator is not
    assert world.admin("sts").get_caller_identity()["Account"] == ACCOUNT
    assert "Items" in world.admin("dynamodb").execute_statement(Statement='SELECT * FROM "Connections"')


def test_faults_hit_function_principals_only_in_dynamodbs_shapes(world: World) -> None:
    # GIVEN every DynamoDB call of functions fails (seeded)
    world.door.configure_faults({"dynamodb": 1.0}, seed=7)
    try:
        dynamodb = world.client("dynamodb")
        single = error_of(dynamodb.get_item, TableName="Connections", Key={"pk": {"S": "c1"}})
        assert single["Error"]["Code"] in {
            "ThrottlingException",
            "ProvisionedThroughputExceededException",
            "InternalServerError",
        }
        # WHEN a transaction is faulted THEN it may be cancelled with DynamoDB's cancellation reasons
        items = [{"Put": {"TableName": "Connections", "Item": {"pk": {"S": f"f{i}"}}}} for i in range(3)]
        codes = set()
        for _ in range(12):
            response = error_of(dynamodb.transact_write_items, TransactItems=items)
            codes.add(response["Error"]["Code"])
            if response["Error"]["Code"] == "TransactionCanceledException":
                assert [reason["Code"] for reason in response["CancellationReasons"]] == [
                    "TransactionConflict",
                    "None",
                    "None",
                ]
        assert "TransactionCanceledException" in codes
        # AND the administrator is never faulted
        assert "Item" in world.admin("dynamodb").get_item(TableName="Connections", Key={"pk": {"S": "c1"}})
        counts = world.door.fault_counts()["dynamodb"]
        assert sum(counts.values()) == 13
    finally:
        world.door.configure_faults({})


def test_sqs_faults_in_the_query_compatible_json_shape(world: World) -> None:
    world.door.configure_faults({"sqs": 1.0}, seed=1)
    try:
        response = error_of(world.client("sqs").send_message, QueueUrl=queue_url(world, "fanout"), MessageBody="x")
        code = response["Error"]["Code"]
        assert code in {"InternalError", "RequestThrottled"}
        assert response["ResponseMetadata"]["HTTPStatusCode"] == (500 if code == "InternalError" else 400)
    finally:
        world.door.configure_faults({})


def test_fault_injection_is_deterministic_for_a_seed() -> None:
    request = ParsedRequest("dynamodb", "json", "PutItem", {})
    first = FaultInjector({"dynamodb": 0.3}, seed=42)
    second = FaultInjector({"dynamodb": 0.3}, seed=42)
    sequence = [first.pick(request) for _ in range(200)]
    assert sequence == [second.pick(request) for _ in range(200)]
    assert 30 <= sum(code is not None for code in sequence) <= 90
    assert first.counts() == second.counts()
    with pytest.raises(ValueError, match="within"):
        FaultInjector({"sqs": 1.5})
    with pytest.raises(ValueError, match="supports"):
        FaultInjector({"events": 0.1})


def test_a_rule_fails_the_next_n_matching_calls_of_one_function_and_the_sdk_retries_through_it(world: World) -> None:
    # GIVEN the next two Query calls of the fan-out function are throttled, and a client that retries (3 attempts)
    dynamodb = world.client("dynamodb")
    retrying = boto3.client(
        "dynamodb",
        region_name=REGION,
        endpoint_url=world.door.endpoint_url,
        aws_access_key_id=world.function.credentials.access_key_id,
        aws_secret_access_key=world.function.credentials.secret_key,
        aws_session_token=world.function.credentials.session_token,
        config=Config(retries={"mode": "standard", "total_max_attempts": 3}),
    )
    query = {
        "TableName": "Connections",
        "KeyConditionExpression": "pk = :pk",
        "ExpressionAttributeValues": {":pk": {"S": "c1"}},
    }
    world.door.configure_faults({})
    with world.door.fault_rule(
        "dynamodb", "ProvisionedThroughputExceededException", operation="Query", function="fanout", count=2
    ) as rule:
        # WHEN other operations, the administrator and the retrying client call
        dynamodb.get_item(TableName="Connections", Key={"pk": {"S": "c1"}})
        world.admin("dynamodb").query(**query)
        answer = retrying.query(**query)

        # THEN only the function's Query calls were failed, twice, and the SDK's third attempt went through
        assert answer["ResponseMetadata"]["RetryAttempts"] == 2
        assert rule.injected == 2 and rule.exhausted
        assert rule.attempts == {1: 1, 2: 1}
        assert dict(rule.by_operation) == {"Query": 2}
        # ... and an exhausted rule fails nothing more
        dynamodb.query(**query)
        assert world.door.fault_counts() == {"dynamodb": {"ProvisionedThroughputExceededException": 2}}
    assert rule not in world.door.rules


def test_a_rule_for_another_function_does_not_match(world: World) -> None:
    # GIVEN a rule for the message function's GetItem, WHEN the fan-out calls GetItem THEN it goes through
    with world.door.fault_rule("dynamodb", "InternalServerError", operation="GetItem", function="message") as rule:
        world.client("dynamodb").get_item(TableName="Connections", Key={"pk": {"S": "c1"}})
    assert rule.injected == 0


def test_a_missing_table_is_answered_as_dynamodb_does_naming_the_table(world: World) -> None:
    # GIVEN the fan-out's PutItem finds no table, WHEN it writes THEN DynamoDB's answer names the table
    with world.door.fault_rule("dynamodb", "ResourceNotFoundException", operation="PutItem", function="fanout"):
        answer = error_of(world.client("dynamodb").put_item, TableName="Connections", Item={"pk": {"S": "c9"}})
    assert answer["Error"]["Code"] == "ResourceNotFoundException"
    assert answer["Error"]["Message"] == "Requested resource not found: Table: Connections not found"


def test_a_transaction_rule_cancels_with_the_given_reasons_until_removed(world: World) -> None:
    # GIVEN every TransactWriteItems of the function is cancelled as throttled on its first item
    dynamodb = world.client("dynamodb")
    items = [{"Put": {"TableName": "Connections", "Item": {"pk": {"S": f"t{i}"}}}} for i in range(3)]
    with world.door.fault_rule(
        "dynamodb", "TransactionCanceledException", operation="TransactWriteItems", reasons=("ThrottlingError",)
    ) as rule:
        # WHEN it writes three times
        answers = [error_of(dynamodb.transact_write_items, TransactItems=items) for _ in range(3)]
    # THEN each was cancelled with DynamoDB's reasons, item by item, and botocore reads them
    for answer in answers:
        assert answer["Error"]["Code"] == "TransactionCanceledException"
        assert [reason["Code"] for reason in answer["CancellationReasons"]] == ["ThrottlingError", "None", "None"]
        assert "ThrottlingError" in answer["Error"]["Message"]
    assert rule.injected == 3
    # ... and once the rule is removed the transaction goes through
    dynamodb.transact_write_items(TransactItems=items)


def test_sqs_and_eventbridge_rules_answer_in_their_services_shapes(world: World) -> None:
    # GIVEN one SendMessage fails inside SQS and one PutEvents is throttled
    world.door.configure_faults({})
    sqs_rule = world.door.add_fault_rule("sqs", "InternalError", operation="SendMessage", count=1)
    events_rule = world.door.add_fault_rule("events", "ThrottlingException", operation="PutEvents", count=1)
    try:
        # WHEN the function sends twice and publishes twice
        sent = error_of(world.client("sqs").send_message, QueueUrl=queue_url(world, "fanout"), MessageBody="x")
        world.client("sqs").send_message(QueueUrl=queue_url(world, "fanout"), MessageBody="x")
        entry = {"Source": "s", "DetailType": "d", "Detail": "{}", "EventBusName": "qt"}
        published = error_of(world.client("events").put_events, Entries=[entry])
        world.client("events").put_events(Entries=[entry])
    finally:
        world.door.remove_fault_rule(sqs_rule)
        world.door.remove_fault_rule(events_rule)
    # THEN the first of each failed with the service's own code and status, the second went through
    assert sent["Error"]["Code"] == "InternalError"
    assert sent["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert published["Error"]["Code"] == "ThrottlingException"
    assert world.door.fault_counts() == {"events": {"ThrottlingException": 1}, "sqs": {"InternalError": 1}}


def test_bad_fault_rules_are_refused_with_a_clear_error(world: World) -> None:
    with pytest.raises(ValueError, match="not 'lambda'"):
        world.door.add_fault_rule("lambda", "ThrottlingException")
    with pytest.raises(ValueError, match="inject one of"):
        world.door.add_fault_rule("dynamodb", "GoneException")
    with pytest.raises(ValueError, match="TransactWriteItems"):
        world.door.add_fault_rule("dynamodb", "TransactionCanceledException", operation="PutItem")
    with pytest.raises(ValueError, match="cancellation reasons"):
        world.door.add_fault_rule(
            "dynamodb", "TransactionCanceledException", operation="TransactWriteItems", reasons=("Throttled",)
        )
    with pytest.raises(ValueError, match="at least 1"):
        world.door.add_fault_rule("sqs", "InternalError", count=0)
    assert world.door.rules == []


def test_a_request_of_several_megabytes_goes_through(world: World) -> None:
    # GIVEN a BatchWriteItem of 25 items of 100 KB (2.5 MB, more than aiohttp buffers by default)
    items = [{"PutRequest": {"Item": {"pk": {"S": f"bulk{i}"}, "blob": {"S": "b" * 100_000}}}} for i in range(25)]
    # WHEN the function sends it THEN it is authorised and written
    assert world.client("dynamodb").batch_write_item(RequestItems={"Connections": items})["UnprocessedItems"] == {}
    assert "Item" in world.admin("dynamodb").get_item(TableName="Connections", Key={"pk": {"S": "bulk24"}})


def test_small_answers_are_relayed_whole_and_big_ones_streamed_unchanged(world: World) -> None:
    # GIVEN items of 300 KB: one is a small answer, four are more than the door relays in one piece (1 MB)
    admin = world.admin("dynamodb")
    for index in range(4):
        admin.put_item(TableName="Audit", Item={"pk": {"S": f"big{index}"}, "blob": {"S": str(index) * 300_000}})
    direct = world.moto.client("dynamodb")
    # WHEN read through the door and straight from moto THEN the answers are identical
    one = {"TableName": "Audit", "Key": {"pk": {"S": "big1"}}}
    assert admin.get_item(**one)["Item"] == direct.get_item(**one)["Item"]
    # AND a BatchGetItem answer of 1.2 MB, streamed back, arrives whole
    keys = {"Audit": {"Keys": [{"pk": {"S": f"big{index}"}} for index in range(4)]}}
    through = admin.batch_get_item(RequestItems=keys)
    assert through["ResponseMetadata"]["HTTPHeaders"]["content-length"] == str(
        direct.batch_get_item(RequestItems=keys)["ResponseMetadata"]["HTTPHeaders"]["content-length"]
    )
    blobs = sorted(item["blob"]["S"] for item in through["Responses"]["Audit"])
    assert blobs == [str(index) * 300_000 for index in range(4)]

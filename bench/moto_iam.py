"""moto's own IAM enforcement against the local AWS front door, case by case: `python -m bench.moto_iam`.

One principal, one policy (the shapes CDK grants render: table + index ARNs, a
queue ARN, an explicit Deny, a condition, a mixed-case action), and the same
requests sent by boto3 twice: straight to moto with its enforcement switched
on (`INITIAL_NO_AUTH_ACTION_COUNT` reached, via `/moto-api/reset-auth`) as an
IAM user holding that policy, and through `local.aws_front_door.server.AwsFrontDoor` as
a function principal holding the same policy. Each outcome is printed beside
what AWS decides. Prints a table and writes bench/moto-iam-results.json;
nothing passes or fails.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
ACCOUNT = "123456789012"
TABLE = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/Connections"

POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": ["dynamodb:PutItem", "dynamodb:Query", "DynamoDB:getitem"],
            "Resource": [TABLE, f"{TABLE}/index/byUser"],
        },
        {"Effect": "Allow", "Action": "dynamodb:DeleteItem", "Resource": "*"},
        {"Effect": "Deny", "Action": "dynamodb:DeleteItem", "Resource": TABLE},
        {
            "Effect": "Allow",
            "Action": "dynamodb:UpdateItem",
            "Resource": TABLE,
            "Condition": {"StringEquals": {"aws:RequestedRegion": "eu-west-1"}},
        },
        {"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": f"arn:aws:sqs:{REGION}:{ACCOUNT}:fanout"},
    ],
}

KEY = {"pk": {"S": "c1"}}
USER_QUERY = {
    "TableName": "Connections",
    "KeyConditionExpression": "#u = :u",
    "ExpressionAttributeNames": {"#u": "user"},
    "ExpressionAttributeValues": {":u": {"S": "u1"}},
}

# (case, what AWS decides, service, operation, parameters)
CASES: list[tuple[str, str, str, str, dict[str, Any]]] = [
    ("PutItem on the granted table", "allow", "dynamodb", "put_item", {"TableName": "Connections", "Item": KEY}),
    ("GetItem granted as 'DynamoDB:getitem' (actions are case-insensitive)", "allow", "dynamodb", "get_item",
     {"TableName": "Connections", "Key": KEY}),
    ("PutItem on a table the policy does not name", "deny", "dynamodb", "put_item",
     {"TableName": "Audit", "Item": KEY}),
    ("Query on the granted index", "allow", "dynamodb", "query", {**USER_QUERY, "IndexName": "byUser"}),
    ("Query on an index the policy does not name", "deny", "dynamodb", "query", {**USER_QUERY, "IndexName": "byOther"}),
    ("TransactWriteItems with one item on an ungranted table", "deny", "dynamodb", "transact_write_items",
     {"TransactItems": [{"Put": {"TableName": "Connections", "Item": KEY}},
                        {"Put": {"TableName": "Audit", "Item": KEY}}]}),
    ("BatchWriteItem (not granted at all)", "deny", "dynamodb", "batch_write_item",
     {"RequestItems": {"Connections": [{"PutRequest": {"Item": KEY}}]}}),
    ("DeleteItem on a table with an explicit Deny", "deny", "dynamodb", "delete_item",
     {"TableName": "Connections", "Key": KEY}),
    ("DeleteItem elsewhere (Allow on *)", "allow", "dynamodb", "delete_item", {"TableName": "Audit", "Key": KEY}),
    ("UpdateItem allowed only when aws:RequestedRegion is eu-west-1", "deny", "dynamodb", "update_item",
     {"TableName": "Connections", "Key": KEY, "UpdateExpression": "SET a = :a",
      "ExpressionAttributeValues": {":a": {"S": "x"}}}),
    ("SendMessage on the granted queue", "allow", "sqs", "send_message", {"QueueName": "fanout", "MessageBody": "x"}),
    ("SendMessage on another queue", "deny", "sqs", "send_message", {"QueueName": "other", "MessageBody": "x"}),
]  # fmt: skip

DENIED_CODES = {"AccessDeniedException", "AccessDenied"}


def client(service: str, endpoint: str, key_id: str, secret: str, token: str | None) -> Any:
    """A client of `service` at `endpoint` with these credentials, one attempt per call: a refusal is an answer."""
    import boto3
    from botocore.config import Config

    make: Any = boto3.client  # any service by name: the stubs only type literal names
    return make(
        service,
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        aws_session_token=token,
        config=Config(retries={"total_max_attempts": 1}),
    )


def main() -> int:
    from botocore.exceptions import ClientError

    from local.aws_front_door.server import AwsFrontDoor
    from local.moto_server import MotoServer
    from local.principals import Principals

    # Two moto servers with the same resources: one enforcing its own IAM, one (unenforced, as the local stack
    # runs it) behind the front door. One server cannot be both: moto would check the door's forwarded requests.
    moto = MotoServer(port=0, mode="subprocess", region=REGION).start()
    behind = MotoServer(port=0, mode="subprocess", region=REGION).start()
    principals = Principals(ACCOUNT)
    function = principals.register_function("bench-fn", "BenchRole", [POLICY])
    door = AwsFrontDoor(behind.endpoint_url, principals, region=REGION).start()
    try:
        for server in (moto, behind):
            queues = _create_resources(server)
        iam = moto.client("iam")
        iam.create_user(UserName="bench-user")
        iam.put_user_policy(UserName="bench-user", PolicyName="bench", PolicyDocument=json.dumps(POLICY))
        key = iam.create_access_key(UserName="bench-user")["AccessKey"]

        moto_clients = {
            service: client(service, moto.endpoint_url, key["AccessKeyId"], key["SecretAccessKey"], None)
            for service in ("dynamodb", "sqs")
        }
        creds = function.credentials
        door_clients = {
            service: client(service, door.endpoint_url, creds.access_key_id, creds.secret_key, creds.session_token)
            for service in ("dynamodb", "sqs")
        }
        # From here on the first moto checks signatures and policies on every request.
        reset = urllib.request.Request(
            f"{moto.endpoint_url}/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"}
        )
        urllib.request.urlopen(reset, timeout=10).close()

        def outcome(call: Callable[..., Any], params: dict[str, Any]) -> str:
            try:
                call(**params)
            except ClientError as error:
                code = error.response["Error"]["Code"]
                if code in DENIED_CODES:
                    return "deny"
                if error.response["ResponseMetadata"]["HTTPStatusCode"] == 403:
                    # moto answers AccessDenied in XML, even to JSON clients, which then cannot read it.
                    return "deny*"
                return f"error {code}"
            return "allow"

        rows = []
        for case, aws, service, operation, params in CASES:
            results = []
            for clients in (moto_clients, door_clients):
                call_params = dict(params)
                if service == "sqs":
                    call_params["QueueUrl"] = queues[call_params.pop("QueueName")]
                results.append(outcome(getattr(clients[service], operation), call_params))
            rows.append({"case": case, "aws": aws, "moto": results[0], "front_door": results[1]})
    finally:
        door.stop()
        behind.stop()
        moto.stop()

    width = max(len(row["case"]) for row in rows)
    print(f"{'case':<{width}}  {'AWS':<6} {'moto':<10} front door")
    for row in rows:
        moto_result, door_result = (_flagged(row[name], row["aws"]) for name in ("moto", "front_door"))
        print(f"{row['case']:<{width}}  {row['aws']:<6} {moto_result:<10} {door_result}")
    agree = {name: sum(row[name].rstrip("*") == row["aws"] for row in rows) for name in ("moto", "front_door")}
    print("deny* = denied, but in moto's XML shape, which DynamoDB's JSON client cannot parse (no error code)")
    print(f"\nagrees with AWS: moto {agree['moto']}/{len(rows)}, front door {agree['front_door']}/{len(rows)}")
    (ROOT / "bench" / "moto-iam-results.json").write_text(
        json.dumps({"command": "python -m bench.moto_iam", "cases": rows, "agrees_with_aws": agree}, indent=2) + "\n"
    )
    return 0


def _flagged(value: str, aws: str) -> str:
    return value if value.rstrip("*") == aws else f"{value} (!)"


def _create_resources(server: Any) -> dict[str, str]:
    dynamodb = server.client("dynamodb")
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
    return {name: server.client("sqs").create_queue(QueueName=name)["QueueUrl"] for name in ("fanout", "other")}


if __name__ == "__main__":
    raise SystemExit(main())

"""What the local AWS front door adds per request: `python -m bench.front_door [--requests N]`.

A DynamoDB GetItem by boto3, sent alternately straight to moto (in its own
process, as the local stack runs it) and through `local.aws_front_door.server.AwsFrontDoor`
(SigV4 verified, the function's policy evaluated, the request forwarded and
the answer streamed back), as a function principal holding a CDK-shaped
policy. Calls alternate so that both paths see the same machine load. Prints
p50/p95 of both and the added latency; writes bench/front-door-results.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from bench.moto_iam import ACCOUNT, REGION, TABLE, client

ROOT = Path(__file__).resolve().parent.parent
# The same principal's world as bench.moto_iam's cases: one account, region and table.
POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": ["dynamodb:BatchGetItem", "dynamodb:GetItem", "dynamodb:Query", "dynamodb:PutItem"],
            "Resource": [TABLE, f"{TABLE}/index/*"],
        },
        {"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": f"arn:aws:sqs:{REGION}:{ACCOUNT}:*"},
    ],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500, help="GetItem calls per path (default 500)")
    args = parser.parse_args(argv)

    from bench import machine
    from local.aws_front_door.server import AwsFrontDoor
    from local.moto_server import MotoServer
    from local.principals import Principals

    moto = MotoServer(port=0, mode="subprocess", region=REGION).start()
    principals = Principals(ACCOUNT)
    function = principals.register_function("bench-fn", "BenchRole", [POLICY])
    door = AwsFrontDoor(moto.endpoint_url, principals, region=REGION).start()
    try:
        moto.client("dynamodb").create_table(
            TableName="Connections",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        item = {"pk": {"S": "c1"}, "user": {"S": "u1"}, "streams": {"S": "x" * 300}}
        moto.client("dynamodb").put_item(TableName="Connections", Item=item)
        credentials = function.credentials

        direct = client("dynamodb", moto.endpoint_url, "testing", "testing", None)
        through = client(
            "dynamodb", door.endpoint_url, credentials.access_key_id, credentials.secret_key, credentials.session_token
        )
        timings: dict[str, list[float]] = {"direct": [], "front_door": []}
        key = {"pk": {"S": "c1"}}
        for _ in range(20):  # sockets, signing keys, moto caches
            direct.get_item(TableName="Connections", Key=key)
            through.get_item(TableName="Connections", Key=key)
        for index in range(args.requests * 2):
            name, target = ("direct", direct) if index % 2 == 0 else ("front_door", through)
            started = time.perf_counter()
            answer = target.get_item(TableName="Connections", Key=key)
            timings[name].append((time.perf_counter() - started) * 1000)
            if answer["Item"] != item:
                raise SystemExit(f"{name} answered a different item: {answer['Item']}")
    finally:
        door.stop()
        moto.stop()

    def percentile(values: list[float], share: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]

    summary = {
        name: {"p50_ms": round(statistics.median(values), 3), "p95_ms": round(percentile(values, 0.95), 3)}
        for name, values in timings.items()
    }
    added = round(summary["front_door"]["p50_ms"] - summary["direct"]["p50_ms"], 3)
    print(f"GetItem x{args.requests} per path, alternating")
    for name, figures in summary.items():
        print(f"  {name:<11} p50 {figures['p50_ms']:7.2f} ms   p95 {figures['p95_ms']:7.2f} ms")
    print(f"  added by the front door at p50: {added:.2f} ms")
    result = {
        "command": "python -m bench.front_door" + (f" --requests {args.requests}" if args.requests != 500 else ""),
        "machine": machine.describe(),
        "requests_per_path": args.requests,
        "latency": summary,
        "added_p50_ms": added,
    }
    (ROOT / "bench" / "front-door-results.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

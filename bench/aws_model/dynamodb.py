"""The DynamoDB client `DynamoStore` is given, on simulated time: latencies, hot partitions, conditions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from botocore.exceptions import ClientError

from bench.aws_model.profiles import Latency, Profile
from bench.aws_model.scheduler import Sim
from bench.aws_model.tally import Tally
from bench.aws_model.token_bucket import TokenBucket


class _TransactionCanceled(ClientError):
    pass


class _Exceptions:
    ClientError = ClientError
    TransactionCanceledException = _TransactionCanceled
    ConditionalCheckFailedException = type("ConditionalCheckFailedException", (ClientError,), {})


class SimDynamoDB:
    """The low-level DynamoDB client `DynamoStore` is given: what the fan-out calls, on simulated time."""

    exceptions = _Exceptions
    meta = None

    def __init__(self, sim: Sim, profile: Profile, tally: Tally, audience_of: Callable[[str], int]) -> None:
        self.sim = sim
        self.profile = profile
        self.tally = tally
        self.items: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._audience_of = audience_of
        self._partitions: dict[tuple[str, str, str], TokenBucket] = {}

    def _partition(self, table: str, key: str, kind: str) -> TokenBucket:
        bucket = self._partitions.get((table, key, kind))
        if bucket is None:
            rate = self.profile.partition_wcu if kind == "w" else self.profile.partition_rcu
            bucket = self._partitions[(table, key, kind)] = TokenBucket(rate, rate)  # one second of burst
        return bucket

    def _call(self, latency: Latency, waits: Sequence[tuple[str, str, str, float]]) -> None:
        delay = 0.0
        for table, key, kind, units in waits:
            delay = max(delay, self._partition(table, key, kind).wait(self.sim.now, units))
            if kind == "w":
                self.tally.write_units += units
            else:
                self.tally.read_units += units
        self.tally.partition_wait += delay
        self.sim.sleep(delay + latency.sample(self.sim.rng))

    @staticmethod
    def _key(key: dict[str, Any]) -> tuple[str, str]:
        values = [next(iter(v.values())) for v in key.values()]
        return str(values[0]), str(values[1]) if len(values) > 1 else ""

    def get_item(self, TableName: str, Key: dict[str, Any], **_: Any) -> dict[str, Any]:
        pk, sk = self._key(Key)
        self._call(self.profile.dynamodb_get, [(TableName, pk, "r", 1.0)])
        item = self.items.get((TableName, pk, sk))
        return {"Item": dict(item)} if item is not None else {}

    def batch_get_item(self, RequestItems: dict[str, Any], **_: Any) -> dict[str, Any]:
        """Consistent reads of a few keys in one call (a batch's event markers and stream heads): GetItem's
        latency, one read unit on each key's partition."""
        ((table, request),) = RequestItems.items()
        keys = [self._key(key) for key in request["Keys"]]
        self._call(self.profile.dynamodb_get, [(table, pk, "r", 1.0) for pk, _ in keys])
        found = [dict(self.items[(table, *key)]) for key in keys if (table, *key) in self.items]
        return {"Responses": {table: found}, "UnprocessedKeys": {}}

    def query(self, TableName: str, ExpressionAttributeValues: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """One page of a Query: at most `query_rows_per_page` rows (DynamoDB's 1 MB), with the key to go on from."""
        key = str(next(iter(ExpressionAttributeValues.values()))["S"])
        if kwargs.get("IndexName"):
            raise NotImplementedError(f"the model serves only the fan-out's Queries, not {TableName} {kwargs}")
        # Audiences are subscriptions; data rooms have no members in these scenarios.
        count = self._audience_of(key) if TableName.endswith("subscriptions") else 0
        start = (
            int(kwargs["ExclusiveStartKey"]["connection_id"]["S"].rpartition("#")[2]) + 1
            if "ExclusiveStartKey" in kwargs
            else 0
        )
        rows = range(start, min(count, start + self.profile.query_rows_per_page))
        units = max(0.5, len(rows) * 120 / 4096)  # strongly consistent reads of ~120-byte rows
        latency = self.profile.dynamodb_query
        per_row = self.profile.query_seconds_per_item + self.profile.row_cpu_seconds
        self._call(
            Latency(latency.p50 + len(rows) * per_row, latency.p99 + len(rows) * per_row),
            [(TableName, key, "r", units)],
        )
        page: dict[str, Any] = {"Items": [_subscription_row(key, index) for index in rows]}
        if rows and rows[-1] + 1 < count:
            page["LastEvaluatedKey"] = {"stream_key": {"S": key}, **_subscription_row(key, rows[-1])}
        return page

    def transact_write_items(self, TransactItems: list[dict[str, Any]]) -> dict[str, Any]:
        waits = []
        for action in TransactItems:
            ((kind, body),) = action.items()
            pk, _ = self._key(body.get("Key") or _key_of(body["Item"]))
            waits.append((body["TableName"], pk, "w", 2.0))  # transactional writes cost two units per KB
        self._call(self.profile.dynamodb_transact, waits)
        # Conditions are checked when the transaction lands, after other processes ran meanwhile.
        reasons = [{"Code": "None"} for _ in TransactItems]
        failed = False
        for index, action in enumerate(TransactItems):
            ((kind, body),) = action.items()
            key = self._key(body.get("Key") or _key_of(body["Item"]))
            current = self.items.get((body["TableName"], *key))
            if "ConditionExpression" in body and not _condition_holds(
                body["ConditionExpression"], current, body.get("ExpressionAttributeValues", {})
            ):
                reasons[index] = {"Code": "ConditionalCheckFailed"}
                failed = True
        if failed:
            self.tally.transaction_conflicts += 1
            response: Any = {"Error": {"Code": "TransactionCanceledException"}, "CancellationReasons": reasons}
            raise _TransactionCanceled(
                response,
                "TransactWriteItems",
            )
        for action in TransactItems:
            ((kind, body),) = action.items()
            if kind == "Put":
                key = self._key(_key_of(body["Item"]))
                self.items[(body["TableName"], *key)] = dict(body["Item"])
            elif kind == "Update":
                key = self._key(body["Key"])
                item = self.items.setdefault((body["TableName"], *key), dict(body["Key"]))
                item.update(_set_expression(body["UpdateExpression"], body["ExpressionAttributeValues"]))
            else:
                raise NotImplementedError(f"transaction action {kind} is not modelled")
        return {}


def _key_of(item: dict[str, Any]) -> dict[str, Any]:
    """The key attributes of a Streams table item (the only table the fan-out writes)."""
    return {"stream": item["stream"], "seq": item["seq"]}


def _condition_holds(expression: str, item: dict[str, Any] | None, values: dict[str, Any]) -> bool:
    """`attribute_not_exists(a)`, optionally `OR a = :v`: the shapes the store's sequencing writes."""
    left, _, right = expression.partition(" OR ")
    attribute = left.strip().removeprefix("attribute_not_exists(").removesuffix(")")
    name, _, placeholder = right.partition(" = ")
    if not left.startswith("attribute_not_exists(") or (right and name.strip() != attribute):
        raise NotImplementedError(f"condition {expression!r} is not modelled")
    if item is None or attribute not in item:
        return True
    return bool(right) and item[attribute] == values[placeholder.strip()]


def _set_expression(expression: str, values: dict[str, Any]) -> dict[str, Any]:
    if not expression.startswith("SET "):
        raise NotImplementedError(f"update {expression!r} is not modelled")
    out = {}
    for assignment in expression[4:].split(","):
        name, _, placeholder = assignment.partition("=")
        out[name.strip()] = values[placeholder.strip()]
    return out


def _subscription_row(stream_key: str, index: int) -> dict[str, Any]:
    return {"connection_id": {"S": f"{stream_key}#{index}"}, "user_id": {"S": f"u{index}"}}

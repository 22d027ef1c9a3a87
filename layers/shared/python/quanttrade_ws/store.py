"""Data access: the only module that talks to DynamoDB.

Every look-up on a hot path is a GetItem or a Query by key. Limits that must
hold under concurrency (room capacity, rooms per client, subscriptions per
client, rate windows) are conditional writes inside transactions, never
read-then-write.

DynamoDB's own failures are never read as a limit. A cancelled transaction is
classified by each item's reason: a failed condition on the item that encodes a
limit is that limit; conflicts and throttling are retried with bounded, jittered
backoff (as are throttling and internal errors of plain calls); anything else
raises `StoreError`, which the client sees as INTERNAL.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from enum import Enum
from typing import Any, TypeVar

from botocore.exceptions import ConnectionError as BotocoreConnectionError
from botocore.exceptions import HTTPClientError

from quanttrade_ws.auth import Identity
from quanttrade_ws.config import Settings
from quanttrade_ws.models import Connection, HistoryEntry, SessionSnapshot, StreamHead, Subscription

ROOM_META = "#meta"  # sorts before every connection id, which never starts with '#'
SEAT_PREFIX = "!seat#"  # a user's seat in a room: sorts before ROOM_META, so member queries never see it
SESSION_PREFIX = "session#"
SPENT_PREFIX = "spent#"  # a session token (by its jti) that has resumed once
USER_PREFIX = "user#"  # a user's open connections (the only kind under this prefix)
RATE_PREFIX = "rate#"  # sliding-window counters; their scopes start with a word of their own (connect#, room#)
EVENT_PREFIX = "event#"


# Cancellation reasons that say "try again", not "your condition failed".
RETRYABLE_REASONS = frozenset(
    {"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded", "RequestLimitExceeded"}
)
# Errors of plain calls (and of a whole transaction) that pass with time.
RETRYABLE_ERRORS = frozenset(
    {
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "InternalServerError",
        "TransactionConflictException",
    }
)
# A request that may not have reached DynamoDB (refused, reset, timed out): botocore retried these
# before the store took retries over.
TRANSPORT_ERRORS = (BotocoreConnectionError, HTTPClientError)
CONDITION_FAILED = "ConditionalCheckFailed"
# DynamoDB's caps: actions in one TransactWriteItems, keys in one BatchGetItem.
_T = TypeVar("_T")

TRANSACTION_ACTIONS = 100
TRANSACTION_BYTES = 4 * 1024 * 1024  # DynamoDB's cap on one transaction's items together
BATCH_GET_KEYS = 100
# A batch subscribe spends one action on the connection's counter; the rest are its rows.
SUBSCRIPTIONS_PER_TRANSACTION = TRANSACTION_ACTIONS - 1
# How many times a join or leave goes through its transaction shapes while another connection of the
# same user keeps changing the seat under it (each round follows the seat's state it last saw).
SEAT_ROUNDS = 4


class StoreError(RuntimeError):
    """DynamoDB refused a change for a reason that is no domain outcome (or kept refusing past the retries)."""


class Outcome(Enum):
    """How a conditional change went, in the domain's words."""

    DONE = "done"
    ALREADY = "already"  # the change was already in place: idempotent success
    LIMIT = "limit"  # the per-connection limit (rooms or subscriptions) is reached
    FULL = "full"  # the room is at capacity
    GONE = "gone"  # the connection row no longer exists
    SHARED = "shared"  # done on a seat the user already holds through another connection


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: float | int) -> dict[str, str]:
    return {"N": str(value)}


def _str(item: dict[str, Any], name: str, default: str = "") -> str:
    value = item.get(name)
    return value["S"] if value and "S" in value else default


def _int(item: dict[str, Any], name: str, default: int = 0) -> int:
    value = item.get(name)
    return int(float(value["N"])) if value and "N" in value else default


def _float(item: dict[str, Any], name: str) -> float | None:
    value = item.get(name)
    return float(value["N"]) if value and "N" in value else None


def _flag(item: dict[str, Any], name: str) -> bool:
    value = item.get(name)
    return bool(value and value.get("BOOL"))


def _string_map(item: dict[str, Any], name: str) -> dict[str, str]:
    value = item.get(name)
    if not value or "M" not in value:
        return {}
    return {key: entry.get("S", "") for key, entry in value["M"].items()}


def _cancellation_reasons(error: Exception) -> list[dict[str, Any]]:
    return list(getattr(error, "response", {}).get("CancellationReasons", []))


def _error_code(error: Exception) -> str:
    return str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))


class Backoff:
    """Bounded retries with full jitter: attempt n waits a random time up to base * 2**n, capped."""

    def __init__(
        self,
        attempts: int = 6,
        base_seconds: float = 0.025,
        cap_seconds: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.attempts = attempts
        self.base_seconds = base_seconds
        self.cap_seconds = cap_seconds
        self.sleep = sleep
        self.jitter = jitter

    def wait(self, attempt: int) -> None:
        self.sleep(self.jitter(0, min(self.cap_seconds, self.base_seconds * 2**attempt)))


class _RetryingClient:
    """The DynamoDB client with throttling and internal errors of single calls retried (bounded).

    botocore's own retries are switched off on the client the store builds, so
    this is the one place that decides how long a call may keep trying.
    """

    def __init__(self, client: Any, backoff: Backoff) -> None:
        self._client = client
        self._backoff = backoff
        self.exceptions = client.exceptions
        self.meta = client.meta

    def __getattr__(self, name: str) -> Any:
        operation = getattr(self._client, name)
        if not callable(operation):
            return operation

        def call(*args: Any, **kwargs: Any) -> Any:
            for attempt in range(self._backoff.attempts):
                try:
                    return operation(*args, **kwargs)
                except self._client.exceptions.ClientError as error:
                    if _error_code(error) not in RETRYABLE_ERRORS or attempt + 1 == self._backoff.attempts:
                        raise
                except TRANSPORT_ERRORS:
                    if attempt + 1 == self._backoff.attempts:
                        raise
                self._backoff.wait(attempt)
            raise AssertionError("unreachable")  # the last attempt returned or raised

        return call


class DynamoStore:
    """Connections, subscriptions, rooms, sessions and stream history on DynamoDB."""

    def __init__(
        self,
        settings: Settings,
        client: Any | None = None,
        clock: Callable[[], float] = time.time,
        backoff: Backoff | None = None,
    ) -> None:
        if client is None:
            import boto3  # deferred: tests and the local stack pass their own client
            from botocore.config import Config

            client = boto3.client(
                "dynamodb",
                region_name=settings.region,
                endpoint_url=settings.aws_endpoint_url,
                # One warm function serves one request at a time on AWS, but the local stack
                # shares this client between a function's worker threads. Retries are the
                # store's own (below): botocore's would multiply them.
                config=Config(max_pool_connections=64, retries={"mode": "standard", "total_max_attempts": 1}),
            )
        self.backoff = backoff or Backoff()
        self._raw: Any = client
        self._db = _RetryingClient(client, self.backoff)
        self._errors = client.exceptions
        self._settings = settings
        self.connections_table = settings.connections_table
        self.subscriptions_table = settings.subscriptions_table
        self.rooms_table = settings.rooms_table
        self.streams_table = settings.streams_table
        self.clock = clock  # stream history retention (tests move it past history_seconds)

    # ------------------------------------------------------------ connections

    def _connection_expiry(self, now: float) -> int:
        return int(now) + self._settings.connection_ttl_seconds

    def add_connection(self, connection: Connection, now: float | None = None) -> None:
        now = time.time() if now is None else now
        identity = connection.identity
        item = {
            "pk": _s(connection.connection_id),
            "kind": _s("connection"),
            "user_id": _s(identity.user_id),
            "client_type": _s(identity.client_type),
            "permissions": _s(",".join(sorted(identity.permissions))),
            "subscription_level": _s(identity.subscription_level),
            "token_expires_at": _n(identity.token_expires_at),
            "token_issued_at": _n(identity.token_issued_at),
            "connected_at": _n(connection.connected_at),
            "last_activity": _n(connection.last_activity),
            "room_count": _n(0),
            "sub_count": _n(0),
            "expires_at": _n(self._connection_expiry(now)),
        }
        self._db.put_item(TableName=self.connections_table, Item=item)

    def get_connection(self, connection_id: str) -> Connection | None:
        item = self._db.get_item(TableName=self.connections_table, Key={"pk": _s(connection_id)}, ConsistentRead=True)
        found = item.get("Item")
        return self._connection_from_item(found) if found and _str(found, "kind") == "connection" else None

    def touch_connection(self, connection_id: str, now: float | None = None, cost: int = 1) -> Connection | None:
        """Record activity and add the frame's cost to the current one-second rate window, atomically.

        Tries the cheap case first (a new window, one write), and only when another
        frame already opened this second does it add to the count. Returns the
        updated row, or None when the connection is gone.
        """
        now = time.time() if now is None else now
        window = int(now)
        common = {":now": _n(int(now)), ":w": _n(window), ":exp": _n(self._connection_expiry(now))}
        key = {"pk": _s(connection_id)}
        for _ in range(3):
            try:
                result = self._db.update_item(
                    TableName=self.connections_table,
                    Key=key,
                    UpdateExpression="SET last_activity = :now, rl_window = :w, rl_count = :one, expires_at = :exp",
                    ConditionExpression="attribute_exists(pk) AND (attribute_not_exists(rl_window) OR rl_window < :w)",
                    ExpressionAttributeValues={**common, ":one": _n(cost)},
                    ReturnValues="ALL_NEW",
                )
                return self._connection_from_item(result["Attributes"])
            except self._errors.ConditionalCheckFailedException:
                pass
            try:
                result = self._db.update_item(
                    TableName=self.connections_table,
                    Key=key,
                    UpdateExpression="SET last_activity = :now, expires_at = :exp ADD rl_count :one",
                    ConditionExpression="attribute_exists(pk) AND rl_window = :w",
                    ExpressionAttributeValues={**common, ":one": _n(cost)},
                    ReturnValues="ALL_NEW",
                )
                return self._connection_from_item(result["Attributes"])
            except self._errors.ConditionalCheckFailedException:
                if self.get_connection(connection_id) is None:
                    return None
                # The window moved on between the two writes: start over.
        return self.get_connection(connection_id)

    def add_rate_warning(self, connection_id: str) -> int:
        """Count one more RATE_LIMIT warning; returns the total so far."""
        try:
            result = self._db.update_item(
                TableName=self.connections_table,
                Key={"pk": _s(connection_id)},
                UpdateExpression="ADD rl_warnings :one",
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeValues={":one": _n(1)},
                ReturnValues="UPDATED_NEW",
            )
        except self._errors.ConditionalCheckFailedException:
            return 0
        return _int(result["Attributes"], "rl_warnings")

    def update_identity(self, connection_id: str, identity: Identity) -> bool:
        """Replace the connection's identity, only by one of the same user from a token no older (`iat`)
        than the current one: of two refreshes racing, the older token cannot land last."""
        try:
            self._db.update_item(
                TableName=self.connections_table,
                Key={"pk": _s(connection_id)},
                # `permissions` is a DynamoDB reserved word: it must go through a name placeholder.
                UpdateExpression="SET #p = :p, subscription_level = :l, token_expires_at = :e, token_issued_at = :i",
                ConditionExpression="attribute_exists(pk) AND user_id = :u"
                " AND (attribute_not_exists(token_issued_at) OR token_issued_at <= :i)",
                ExpressionAttributeNames={"#p": "permissions"},
                ExpressionAttributeValues={
                    ":p": _s(",".join(sorted(identity.permissions))),
                    ":l": _s(identity.subscription_level),
                    ":e": _n(identity.token_expires_at),
                    ":i": _n(identity.token_issued_at),
                    ":u": _s(identity.user_id),
                },
            )
        except self._errors.ConditionalCheckFailedException:
            return False
        return True

    def set_session(self, connection_id: str, session_id: str) -> None:
        self._db.update_item(
            TableName=self.connections_table,
            Key={"pk": _s(connection_id)},
            UpdateExpression="SET session_id = :s",
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeValues={":s": _s(session_id)},
        )

    def delete_connection(self, connection_id: str) -> Connection | None:
        result = self._db.delete_item(
            TableName=self.connections_table, Key={"pk": _s(connection_id)}, ReturnValues="ALL_OLD"
        )
        old = result.get("Attributes")
        return self._connection_from_item(old) if old and _str(old, "kind") == "connection" else None

    def claim_user_connection(self, user_id: str, connection_id: str, cap: int, now: float | None = None) -> bool:
        """Add the connection to the user's open connections if they hold fewer than `cap`.

        The user's item keeps the ids themselves (a string set), not a counter: adding
        and removing an id are idempotent, so a repeated $connect or $disconnect cannot
        make it drift, and an id whose connection row is gone (its $disconnect never
        came and the row expired) can be recognised and dropped when the cap is hit.
        Call it after the connection row is written, so a live id always has a row.
        """
        now = time.time() if now is None else now
        for attempt in range(2):
            try:
                self._db.update_item(
                    TableName=self.connections_table,
                    Key={"pk": _s(USER_PREFIX + user_id)},
                    UpdateExpression="SET kind = :kind, expires_at = :exp ADD conns :c",
                    ConditionExpression="attribute_not_exists(conns) OR size(conns) < :cap OR contains(conns, :cid)",
                    ExpressionAttributeValues={
                        ":kind": _s("user_connections"),
                        ":exp": _n(self._connection_expiry(now)),
                        ":c": {"SS": [connection_id]},
                        ":cap": _n(cap),
                        ":cid": _s(connection_id),
                    },
                )
                return True
            except self._errors.ConditionalCheckFailedException:
                if attempt or not self._forget_closed_connections(user_id, keep=connection_id):
                    return False
        return False

    def release_user_connection(self, user_id: str, connection_id: str) -> None:
        self._db.update_item(
            TableName=self.connections_table,
            Key={"pk": _s(USER_PREFIX + user_id)},
            UpdateExpression="DELETE conns :c",
            ExpressionAttributeValues={":c": {"SS": [connection_id]}},
        )

    def user_connections(self, user_id: str) -> set[str]:
        found = self._db.get_item(
            TableName=self.connections_table, Key={"pk": _s(USER_PREFIX + user_id)}, ConsistentRead=True
        ).get("Item")
        return set((found or {}).get("conns", {}).get("SS", []))

    def _forget_closed_connections(self, user_id: str, keep: str) -> bool:
        """Drop the user's ids that no longer have a connection row; returns whether any was dropped."""
        closed = [cid for cid in self.user_connections(user_id) - {keep} if self.get_connection(cid) is None]
        if closed:
            self._db.update_item(
                TableName=self.connections_table,
                Key={"pk": _s(USER_PREFIX + user_id)},
                UpdateExpression="DELETE conns :c",
                ExpressionAttributeValues={":c": {"SS": closed}},
            )
        return bool(closed)

    def count_in_window(self, key: str, window_seconds: int, now: float | None = None) -> float:
        """Count one event under `key` and return the events of the last `window_seconds`, this one included.

        A sliding window, not a fixed one (a fixed minute lets twice the limit through
        around its boundary): the current bucket's count plus the previous bucket's,
        weighted by how much of it still lies inside the window. One item per key holds
        both buckets; each step is a conditional update, so concurrent callers never
        lose a count, and the common case (same bucket) is one write.
        """
        now = time.time() if now is None else now
        bucket = int(now // window_seconds)
        inside = 1 - (now - bucket * window_seconds) / window_seconds  # share of the previous bucket still counted
        base = "SET kind = :kind, expires_at = :exp"
        steps = (
            (f"{base} ADD cur_count :one", "cur_bucket = :b"),
            # Same bucket, or a caller whose clock runs ahead already moved it on: count there.
            (f"{base} ADD cur_count :one", "cur_bucket > :b"),
            (f"{base}, prev_count = cur_count, cur_count = :one, cur_bucket = :b", "cur_bucket = :prev"),
            (
                f"{base}, prev_count = :zero, cur_count = :one, cur_bucket = :b",
                "attribute_not_exists(cur_bucket) OR cur_bucket < :prev",
            ),
        )
        values = {
            ":kind": _s("rate"),
            ":exp": _n((bucket + 2) * window_seconds),
            ":one": _n(1),
            ":zero": _n(0),
            ":b": _n(bucket),
            ":prev": _n(bucket - 1),
        }
        step = 0
        for _ in range(3 * len(steps)):
            update, condition = steps[step]
            used = {name: value for name, value in values.items() if name in update or name in condition}
            try:
                result = self._db.update_item(
                    TableName=self.connections_table,
                    Key={"pk": _s(RATE_PREFIX + key)},
                    UpdateExpression=update,
                    ConditionExpression=condition,
                    ExpressionAttributeValues=used,
                    ReturnValues="ALL_NEW",
                    # A refusal shows where the buckets stand, so the next try is the step that fits:
                    # a key's first count costs two writes, not four.
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
            except self._errors.ConditionalCheckFailedException as refused:
                found = refused.response.get("Item")
                step = _window_step(found if isinstance(found, dict) else None, bucket)
                continue
            counts = result["Attributes"]
            return _int(counts, "cur_count") + _int(counts, "prev_count") * inside
        raise RuntimeError(f"could not count in the rate window {key}: too much contention")

    def stale_connections(self, idle_before: float, expired_before: float | None = None) -> Iterator[Connection]:
        """Connections whose last activity is older than `idle_before`, or (with `expired_before`)
        whose access token expired before then: the sweeper's look-up.

        A Scan, deliberately: it runs on a schedule off every hot path, reads
        only the few attributes it needs, and pages through the table.
        """
        condition = "last_activity < :before"
        values = {":kind": _s("connection"), ":before": _n(int(idle_before))}
        if expired_before is not None:
            condition = f"({condition} OR (token_expires_at > :zero AND token_expires_at < :expired))"
            values.update({":zero": _n(0), ":expired": _n(int(expired_before))})
        pages = self._scan_pages(
            TableName=self.connections_table,
            FilterExpression=f"kind = :kind AND {condition}",
            ExpressionAttributeValues=values,
        )
        for page in pages:
            for item in page.get("Items", []):
                yield self._connection_from_item(item)

    def count_connections(self) -> int:
        return self._count(self.connections_table, "kind = :kind", {":kind": _s("connection")})

    def count_rooms(self) -> int:
        return self._count(
            self.rooms_table, "member_id = :meta AND member_count > :zero", {":meta": _s(ROOM_META), ":zero": _n(0)}
        )

    def count_subscriptions(self) -> int:
        return self._count(self.subscriptions_table)

    def _count(self, table: str, condition: str | None = None, values: dict[str, Any] | None = None) -> int:
        """Admin statistics only: a counting Scan, never on a hot path."""
        kwargs: dict[str, Any] = {"TableName": table, "Select": "COUNT"}
        if condition:
            kwargs.update(FilterExpression=condition, ExpressionAttributeValues=values)
        return sum(page.get("Count", 0) for page in self._scan_pages(**kwargs))

    @staticmethod
    def _connection_from_item(item: dict[str, Any]) -> Connection:
        permissions = _str(item, "permissions")
        return Connection(
            connection_id=_str(item, "pk"),
            identity=Identity(
                user_id=_str(item, "user_id", "unknown") or "unknown",
                client_type=_str(item, "client_type", "web"),
                permissions=frozenset(p for p in permissions.split(",") if p),
                subscription_level=_str(item, "subscription_level", "free"),
                token_expires_at=_int(item, "token_expires_at"),
                token_issued_at=_int(item, "token_issued_at"),
            ),
            connected_at=_int(item, "connected_at"),
            last_activity=_int(item, "last_activity"),
            session_id=_str(item, "session_id") or None,
            room_count=_int(item, "room_count"),
            subscription_count=_int(item, "sub_count"),
            rate_window=_int(item, "rl_window"),
            rate_count=_int(item, "rl_count"),
        )

    # ------------------------------------------------------------ sessions

    def save_session(
        self, snapshot: SessionSnapshot, ttl_seconds: int, now: float | None = None, held_by: str | None = None
    ) -> bool:
        """Store a session's snapshot. With `held_by`, only while the session is still held by that connection
        (or has no snapshot yet): a connection the session moved on from must not overwrite the live one's.
        Returns whether it was stored."""
        now = time.time() if now is None else now
        item: dict[str, Any] = {
            "pk": _s(SESSION_PREFIX + snapshot.session_id),
            "kind": _s("session"),
            "user_id": _s(snapshot.user_id),
            "subscriptions": _s(json.dumps([_subscription_json(s) for s in snapshot.subscriptions])),
            "rooms": _s(json.dumps(list(snapshot.rooms))),
            "expires_at": _n(int(now) + ttl_seconds),
        }
        if snapshot.connection_id:
            item["connection_id"] = _s(snapshot.connection_id)
        if held_by is None:
            self._db.put_item(TableName=self.connections_table, Item=item)
            return True
        try:
            self._db.put_item(
                TableName=self.connections_table,
                Item=item,
                ConditionExpression="attribute_not_exists(pk) OR connection_id = :held_by",
                ExpressionAttributeValues={":held_by": _s(held_by)},
            )
        except self._errors.ConditionalCheckFailedException:
            return False
        return True

    def spend_session_token(self, token_id: str, expires_at: int, connection_id: str) -> bool:
        """Mark a session token used by this connection: False when another connection used it.

        One conditional write, so of two resumes racing with one token on two
        connections exactly one wins. Until `complete_session_token`, the
        connection that spent it may present it again: a resume that failed after
        spending (INTERNAL) can be retried, and a write retried after its first
        attempt landed finds its own marker; a completed resume cannot be replayed.
        The marker lives as long as the token could still be presented.
        """
        try:
            self._db.put_item(
                TableName=self.connections_table,
                Item={
                    "pk": _s(SPENT_PREFIX + token_id),
                    "kind": _s("spent_session_token"),
                    "spent_by": _s(connection_id),
                    "expires_at": _n(expires_at),
                },
                ConditionExpression=(
                    "attribute_not_exists(pk) OR (spent_by = :connection AND attribute_not_exists(completed))"
                ),
                ExpressionAttributeValues={":connection": _s(connection_id)},
            )
        except self._errors.ConditionalCheckFailedException:
            return False
        return True

    def complete_session_token(self, token_id: str) -> None:
        """The resume that spent the token answered: the token cannot be presented again, even by its connection."""
        self._db.update_item(
            TableName=self.connections_table,
            Key={"pk": _s(SPENT_PREFIX + token_id)},
            UpdateExpression="SET completed = :yes",
            ExpressionAttributeValues={":yes": _n(1)},
        )

    def load_session(self, session_id: str) -> SessionSnapshot | None:
        found = self._db.get_item(
            TableName=self.connections_table, Key={"pk": _s(SESSION_PREFIX + session_id)}, ConsistentRead=True
        ).get("Item")
        if not found or _int(found, "expires_at") < time.time():
            return None
        subscriptions = tuple(
            Subscription(
                stream_key=entry["stream_key"],
                connection_id="",
                interval=entry.get("interval"),
                filters=entry.get("filters", {}),
                latest_only=bool(entry.get("latest_only", False)),
            )
            for entry in json.loads(_str(found, "subscriptions", "[]"))
        )
        return SessionSnapshot(
            session_id=session_id,
            user_id=_str(found, "user_id"),
            subscriptions=subscriptions,
            rooms=tuple(json.loads(_str(found, "rooms", "[]"))),
            connection_id=_str(found, "connection_id") or None,
        )

    # ------------------------------------------------------------ subscriptions

    def _connection_counter(self, connection_id: str, counter: str, delta: int, limit: int | None = None) -> dict:
        """A transaction step that moves one of the connection's counters, below `limit` when adding."""
        return self._connection_counters(connection_id, {counter: (delta, limit)})

    def _connection_counters(self, connection_id: str, deltas: dict[str, tuple[int, int | None]]) -> dict:
        """One transaction step that moves several of the connection's counters at once (a transaction
        may touch an item only once): `{counter: (delta, limit)}`, each kept below its limit when given.

        Its failed condition returns the row it saw, so the caller tells a reached
        limit (a row) from a connection that is gone (none) without another read."""
        condition = "attribute_exists(pk)"
        values: dict[str, Any] = {}
        adds = []
        for i, (counter, (delta, limit)) in enumerate(sorted(deltas.items())):
            adds.append(f"{counter} :d{i}")
            values[f":d{i}"] = _n(delta)
            if limit is not None:
                condition += f" AND {counter} < :l{i}"
                values[f":l{i}"] = _n(limit)
        return {
            "Update": {
                "TableName": self.connections_table,
                "Key": {"pk": _s(connection_id)},
                "UpdateExpression": "ADD " + ", ".join(adds),
                "ConditionExpression": condition,
                "ExpressionAttributeValues": values,
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }

    def _transact(self, items: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """Run one transaction: None once it committed, else each item's cancellation reason.

        Returns reasons only when conditions failed (every reason `None` or
        `ConditionalCheckFailed`): the caller reads them item by item. Conflicts
        and throttling are retried with jittered backoff, a bounded number of
        times; anything else, or too many retries, raises StoreError.
        """
        for attempt in range(self.backoff.attempts):
            try:
                self._raw.transact_write_items(TransactItems=items)
                return None
            except self._errors.TransactionCanceledException as error:
                reasons = _cancellation_reasons(error)
                codes = {reason.get("Code", "None") for reason in reasons} - {"None"}
                if not codes & RETRYABLE_REASONS:
                    if codes == {CONDITION_FAILED}:
                        return reasons
                    raise StoreError(f"transaction cancelled: {', '.join(sorted(codes)) or 'no reason'}") from None
            except self._errors.ClientError as error:
                if _error_code(error) not in RETRYABLE_ERRORS:
                    raise
            except TRANSPORT_ERRORS:
                pass
            if attempt + 1 < self.backoff.attempts:
                self.backoff.wait(attempt)
        raise StoreError(f"transaction still conflicting or throttled after {self.backoff.attempts} attempts")

    def _subscription_item(self, subscription: Subscription) -> dict[str, Any]:
        item: dict[str, Any] = {
            "stream_key": _s(subscription.stream_key),
            "connection_id": _s(subscription.connection_id),
            "user_id": _s(subscription.user_id),
            "filters": {"M": {k: _s(v) for k, v in subscription.filters.items()}},
            "token_expires_at": _n(subscription.token_expires_at),
            "expires_at": _n(self._connection_expiry(time.time())),
        }
        if subscription.interval is not None:
            item["interval"] = _n(subscription.interval)
        if subscription.latest_only:
            item["latest_only"] = {"BOOL": True}
        return item

    def _new_subscription(self, item: dict[str, Any]) -> dict[str, Any]:
        """A transaction step writing a subscription row only where none is, so none is counted twice."""
        return {
            "Put": {
                "TableName": self.subscriptions_table,
                "Item": item,
                "ConditionExpression": "attribute_not_exists(connection_id)",
            }
        }

    def add_subscription(self, subscription: Subscription, limit: int, cost: int = 1) -> Outcome:
        """Subscribe, counting `cost` against the connection's limit in the same transaction."""
        item = self._subscription_item(subscription)
        reasons = self._transact(
            [
                self._new_subscription(item),
                # sub_count + cost <= limit, as `sub_count < limit - cost + 1`
                self._connection_counter(subscription.connection_id, "sub_count", cost, limit=limit - cost + 1),
            ]
        )
        if reasons is None:
            return Outcome.DONE
        if _failed(reasons, 0):
            # Already subscribed: keep one row, take the newest interval and filters.
            self._db.put_item(TableName=self.subscriptions_table, Item=item)
            return Outcome.ALREADY
        return _counter_outcome(reasons[1])

    def add_subscriptions(self, subscriptions: Sequence[tuple[Subscription, int]], limit: int) -> bool:
        """Subscribe one connection to several new streams at once: `(subscription, cost)` pairs, all or none.

        One transaction: a conditional Put per stream (as `add_subscription`
        writes it) and one update of the connection's counter by the total cost,
        kept within `limit`. True: every row is written and counted. False:
        nothing was written, because a stream was already subscribed, the limit
        would be passed or the connection is gone; the caller then subscribes
        one stream at a time, which tells those apart and stops where today's
        order of streams reaches the limit.
        """
        if not subscriptions:
            raise ValueError("add_subscriptions needs at least one subscription")
        if len(subscriptions) > SUBSCRIPTIONS_PER_TRANSACTION:
            raise ValueError(
                f"{len(subscriptions)} subscriptions do not fit one transaction "
                f"(at most {SUBSCRIPTIONS_PER_TRANSACTION} besides the connection's counter)"
            )
        connection_ids = {subscription.connection_id for subscription, _ in subscriptions}
        if len(connection_ids) != 1:
            raise ValueError(f"add_subscriptions takes one connection's subscriptions, not {sorted(connection_ids)}")
        keys = [subscription.stream_key for subscription, _ in subscriptions]
        if len(set(keys)) != len(keys):
            # A transaction may touch an item once: DynamoDB would refuse the whole request.
            raise ValueError(
                f"add_subscriptions got a stream twice: {sorted(k for k in set(keys) if keys.count(k) > 1)}"
            )
        total = sum(cost for _, cost in subscriptions)
        reasons = self._transact(
            [
                *(self._new_subscription(self._subscription_item(subscription)) for subscription, _ in subscriptions),
                # sub_count + total <= limit, as `sub_count < limit - total + 1`
                self._connection_counter(connection_ids.pop(), "sub_count", total, limit=limit - total + 1),
            ]
        )
        return reasons is None

    def remove_subscription(
        self, stream_key: str, connection_id: str, adjust_connection: bool = True, cost: int = 1
    ) -> bool:
        """Unsubscribe, giving the subscription's `cost` back to the connection's count in the same transaction."""
        delete = {
            "Delete": {
                "TableName": self.subscriptions_table,
                "Key": {"stream_key": _s(stream_key), "connection_id": _s(connection_id)},
                "ConditionExpression": "attribute_exists(connection_id)",
            }
        }
        items: list[dict[str, Any]] = [delete]
        if adjust_connection:
            items.append(self._connection_counter(connection_id, "sub_count", -cost))
        # The row and its count go together or not at all: a row already gone leaves the counter alone.
        reasons = self._transact(items)
        if reasons is None:
            return True
        if _failed(reasons, 0):
            return False
        # Only the counter's condition is left: the connection row, and its counter with it, is
        # gone. The subscription still goes.
        return self._transact([delete]) is None

    def subscribers(self, stream_key: str) -> list[Subscription]:
        """Everyone subscribed to one stream key: a Query, never a Scan."""
        return [
            Subscription(
                stream_key=stream_key,
                connection_id=_str(item, "connection_id"),
                user_id=_str(item, "user_id"),
                interval=_float(item, "interval"),
                filters=_string_map(item, "filters"),
                token_expires_at=_int(item, "token_expires_at"),
                latest_only=_flag(item, "latest_only"),
            )
            for item in self._query(
                TableName=self.subscriptions_table,
                KeyConditionExpression="stream_key = :k",
                ExpressionAttributeValues={":k": _s(stream_key)},
                ProjectionExpression="connection_id, user_id, #i, filters, token_expires_at, latest_only",
                ExpressionAttributeNames={"#i": "interval"},
                # Strongly consistent: a subscription written a moment ago must be seen
                # once the fan-out's audience cache turns over (resume depends on it).
                ConsistentRead=True,
            )
        ]

    def subscriptions_of(self, connection_id: str) -> list[Subscription]:
        keys = [
            _str(item, "stream_key")
            for item in self._query(
                TableName=self.subscriptions_table,
                IndexName="by_connection",
                KeyConditionExpression="connection_id = :c",
                ExpressionAttributeValues={":c": _s(connection_id)},
            )
        ]
        if not keys:
            return []
        # The index projects keys only; fetch the rows for their filters and intervals.
        found = []
        for chunk in _chunks(keys, 100):
            request = {
                self.subscriptions_table: {
                    "Keys": [{"stream_key": _s(k), "connection_id": _s(connection_id)} for k in chunk]
                }
            }
            while request:
                response = self._db.batch_get_item(RequestItems=request)
                found.extend(response["Responses"].get(self.subscriptions_table, []))
                request = response.get("UnprocessedKeys") or {}
        return sorted(
            (
                Subscription(
                    stream_key=_str(item, "stream_key"),
                    connection_id=connection_id,
                    user_id=_str(item, "user_id"),
                    interval=_float(item, "interval"),
                    filters=_string_map(item, "filters"),
                    latest_only=_flag(item, "latest_only"),
                )
                for item in found
            ),
            key=lambda s: s.stream_key,
        )

    # ------------------------------------------------------------ rooms

    def join_room(
        self,
        room: str,
        connection_id: str,
        user_id: str,
        capacity: int,
        room_limit: int,
        token_expires_at: int = 0,
        subscription_limit: int | None = None,
    ) -> Outcome:
        """Join in one transaction with its conditions: this connection not yet a member,
        the connection below its room limit, and either a new seat for the user with the
        room below capacity, or the user's existing seat (a user holds one seat in a room
        however many of their connections are in it). Concurrent joins for the last seat
        cannot both win. With `subscription_limit` (a data room), the membership also
        counts as one subscription, below that limit, in the same step.

        DONE: the user took a new seat; SHARED: the connection joined the user's seat."""
        now = time.time()
        counters: dict[str, tuple[int, int | None]] = {"room_count": (1, room_limit)}
        if subscription_limit is not None:
            counters["sub_count"] = (1, subscription_limit)
        membership = {
            "Put": {
                "TableName": self.rooms_table,
                "Item": {
                    "room": _s(room),
                    "member_id": _s(connection_id),
                    "connection_id": _s(connection_id),
                    "user_id": _s(user_id),
                    "token_expires_at": _n(token_expires_at),
                    "joined_at": _n(int(now)),
                    "expires_at": _n(self._connection_expiry(now)),
                },
                "ConditionExpression": "attribute_not_exists(member_id)",
            }
        }
        seat_key = {"room": _s(room), "member_id": _s(SEAT_PREFIX + user_id)}
        # Every shape: the membership at index 0, the seat at index 1, the connection's counters last.
        new_seat = [
            membership,
            {
                "Put": {
                    "TableName": self.rooms_table,
                    "Item": {
                        **seat_key,
                        "user_id": _s(user_id),
                        "conns": {"SS": [connection_id]},
                        "expires_at": _n(self._connection_expiry(now)),
                    },
                    "ConditionExpression": "attribute_not_exists(member_id)",
                }
            },
            {
                "Update": {
                    "TableName": self.rooms_table,
                    "Key": {"room": _s(room), "member_id": _s(ROOM_META)},
                    "UpdateExpression": "ADD member_count :one",
                    "ConditionExpression": "attribute_not_exists(member_count) OR member_count < :cap",
                    "ExpressionAttributeValues": {":one": _n(1), ":cap": _n(capacity)},
                }
            },
            self._connection_counters(connection_id, counters),
        ]
        shared_seat = [
            membership,
            {
                "Update": {
                    "TableName": self.rooms_table,
                    "Key": seat_key,
                    "UpdateExpression": "ADD conns :c SET expires_at = :exp",
                    "ConditionExpression": "attribute_exists(member_id)",
                    "ExpressionAttributeValues": {
                        ":c": {"SS": [connection_id]},
                        ":exp": _n(self._connection_expiry(now)),
                    },
                }
            },
            self._connection_counters(connection_id, counters),
        ]
        # The seat may appear or vanish between the two shapes (another connection of the
        # user joining or leaving): a failed condition on the seat sends us to the other shape.
        # Conflicts and throttling never get here: `_transact` retries them.
        for _ in range(SEAT_ROUNDS):
            for items, outcome in ((new_seat, Outcome.DONE), (shared_seat, Outcome.SHARED)):
                reasons = self._transact(items)
                if reasons is None:
                    return outcome
                if _failed(reasons, 0):
                    return Outcome.ALREADY
                if _failed(reasons, 1):
                    continue  # the seat is not in the state this shape needs: try the other
                if outcome is Outcome.DONE and _failed(reasons, 2):
                    return Outcome.FULL
                return _counter_outcome(reasons[len(items) - 1])
        raise StoreError(f"could not join {room}: the user's seat kept changing")

    def leave_room(
        self, room: str, connection_id: str, adjust_connection: bool = True, subscription: bool = False
    ) -> Outcome | None:
        """Leave a room; `subscription` gives back the subscription a data room's membership counted as.

        The membership, the seat, the room's count and the connection's counters change in
        one transaction conditioned on the membership, or not at all: counters never drift.

        DONE: the user's seat was freed (their last connection in the room left);
        SHARED: another of the user's connections still holds the seat; None: not a member."""
        found = self._db.get_item(
            TableName=self.rooms_table,
            Key={"room": _s(room), "member_id": _s(connection_id)},
            ProjectionExpression="user_id",
            ConsistentRead=True,
        ).get("Item")
        if not found:
            return None
        seat_key = {"room": _s(room), "member_id": _s(SEAT_PREFIX + _str(found, "user_id"))}
        tail: list[dict[str, Any]] = []
        if adjust_connection:
            counters: dict[str, tuple[int, int | None]] = {"room_count": (-1, None)}
            if subscription:
                counters["sub_count"] = (-1, None)
            tail.append(self._connection_counters(connection_id, counters))
        for _ in range(SEAT_ROUNDS):
            for items, outcome in self._leave_shapes(room, connection_id, seat_key, tail):
                reasons = self._transact(items)
                if reasons is None:
                    return outcome
                if _failed(reasons, 0):
                    return None  # left meanwhile
                if _failed(reasons, 1):
                    continue  # the seat is not in the state this shape needs: try the next
                # Only the connection's counters are left (the room's count has no condition): the
                # connection row is gone, so the membership goes without them, in the next round.
                tail = []
                break
        raise StoreError(f"could not leave {room}: the user's seat kept changing")

    def _leave_shapes(
        self, room: str, connection_id: str, seat_key: dict[str, Any], tail: list[dict[str, Any]]
    ) -> list[tuple[list[dict[str, Any]], Outcome]]:
        """The ways a membership can go, one per state of the user's seat (their conditions exclude each
        other): the membership at index 0, the seat at index 1, then the room's count and `tail`."""
        membership = {
            "Delete": {
                "TableName": self.rooms_table,
                "Key": {"room": _s(room), "member_id": _s(connection_id)},
                "ConditionExpression": "attribute_exists(member_id)",
            }
        }
        free_place = {
            "Update": {
                "TableName": self.rooms_table,
                "Key": {"room": _s(room), "member_id": _s(ROOM_META)},
                "UpdateExpression": "ADD member_count :minus",
                "ExpressionAttributeValues": {":minus": _n(-1)},
            }
        }
        cid = {":cid": _s(connection_id)}
        return [
            # the user's last connection in the room: the seat goes, and the room has one place more
            (
                [
                    membership,
                    {
                        "Delete": {
                            "TableName": self.rooms_table,
                            "Key": seat_key,
                            "ConditionExpression": "contains(conns, :cid) AND size(conns) = :one",
                            "ExpressionAttributeValues": {**cid, ":one": _n(1)},
                        }
                    },
                    free_place,
                    *tail,
                ],
                Outcome.DONE,
            ),
            # another connection of the user stays: the seat stays
            (
                [
                    membership,
                    {
                        "Update": {
                            "TableName": self.rooms_table,
                            "Key": seat_key,
                            "UpdateExpression": "DELETE conns :c",
                            "ConditionExpression": "contains(conns, :cid) AND size(conns) > :one",
                            "ExpressionAttributeValues": {**cid, ":one": _n(1), ":c": {"SS": [connection_id]}},
                        }
                    },
                    *tail,
                ],
                Outcome.SHARED,
            ),
            # a membership from before seats existed: it counted one place by itself
            (
                [
                    membership,
                    {
                        "ConditionCheck": {
                            "TableName": self.rooms_table,
                            "Key": seat_key,
                            "ConditionExpression": "attribute_not_exists(member_id) OR NOT contains(conns, :cid)",
                            "ExpressionAttributeValues": cid,
                        }
                    },
                    free_place,
                    *tail,
                ],
                Outcome.DONE,
            ),
        ]

    def room_size(self, room: str) -> int:
        """How many members the room counts (its `#meta` counter): one GetItem, whatever the size."""
        found = self._db.get_item(
            TableName=self.rooms_table,
            Key={"room": _s(room), "member_id": _s(ROOM_META)},
            ProjectionExpression="member_count",
            ConsistentRead=True,
        ).get("Item")
        return _int(found or {}, "member_count")

    def room_members(self, room: str) -> list[str]:
        return [
            _str(item, "member_id")
            for item in self._query(
                TableName=self.rooms_table,
                KeyConditionExpression="room = :r AND member_id > :meta",
                ExpressionAttributeValues={":r": _s(room), ":meta": _s(ROOM_META)},
                ProjectionExpression="member_id",
                ConsistentRead=True,
            )
        ]

    def room_audience(self, room: str) -> list[Subscription]:
        """A data room's members as the fan-out needs them: connection and token expiry."""
        return [
            Subscription(
                stream_key=f"room:{room}",
                connection_id=_str(item, "member_id"),
                user_id=_str(item, "user_id"),
                token_expires_at=_int(item, "token_expires_at"),
            )
            for item in self._query(
                TableName=self.rooms_table,
                KeyConditionExpression="room = :r AND member_id > :meta",
                ExpressionAttributeValues={":r": _s(room), ":meta": _s(ROOM_META)},
                ProjectionExpression="member_id, user_id, token_expires_at",
                ConsistentRead=True,
            )
        ]

    def set_token_expiry(self, connection_id: str, token_expires_at: int) -> None:
        """Copy a refreshed token's expiry onto every subscription and membership row the connection owns."""
        owned = [
            (self.subscriptions_table, {"stream_key": item["stream_key"], "connection_id": _s(connection_id)})
            for item in self._owned(self.subscriptions_table, connection_id)
        ] + [
            (self.rooms_table, {"room": item["room"], "member_id": _s(connection_id)})
            for item in self._owned(self.rooms_table, connection_id)
        ]
        for table, key in owned:
            # A row removed meanwhile stays removed: the condition keeps the update from resurrecting it.
            with contextlib.suppress(self._errors.ConditionalCheckFailedException):
                self._db.update_item(
                    TableName=table,
                    Key=key,
                    UpdateExpression="SET token_expires_at = :e",
                    ConditionExpression="attribute_exists(connection_id)",
                    ExpressionAttributeValues={":e": _n(token_expires_at)},
                )

    def _owned(self, table: str, connection_id: str) -> Iterator[dict[str, Any]]:
        return self._query(
            TableName=table,
            IndexName="by_connection",
            KeyConditionExpression="connection_id = :c",
            ExpressionAttributeValues={":c": _s(connection_id)},
        )

    def rooms_of(self, connection_id: str) -> list[str]:
        return sorted(
            _str(item, "room")
            for item in self._query(
                TableName=self.rooms_table,
                IndexName="by_connection",
                KeyConditionExpression="connection_id = :c",
                ExpressionAttributeValues={":c": _s(connection_id)},
            )
        )

    def is_member(self, room: str, connection_id: str) -> bool:
        found = self._db.get_item(
            TableName=self.rooms_table,
            Key={"room": _s(room), "member_id": _s(connection_id)},
            ProjectionExpression="member_id",
            ConsistentRead=True,
        )
        return "Item" in found

    # ------------------------------------------------------------ streams

    def sequence_event(self, stream: str, event_id: str, message_for_seq: Any) -> tuple[int, str, bool]:
        """Give an upstream event its place in its stream, once.

        Returns (seq, message, fresh). A redelivered event gets the seq and message
        it was given the first time (fresh=False), so clients can drop the duplicate.
        `message_for_seq(seq) -> str` renders the message once the seq is known.
        """
        marker_key = {"stream": _s(EVENT_PREFIX + event_id), "seq": _n(0)}
        head_key = {"stream": _s(stream), "seq": _n(0)}
        # The seq is taken in the same transaction that stores the entry, conditional on the
        # head still being where it was read: a failed write leaves no gap in the stream, and
        # two writers of one event or one stream cannot both win (the loser looks again).
        for _ in range(8):
            known = self._db.get_item(TableName=self.streams_table, Key=marker_key, ConsistentRead=True).get("Item")
            stale_seq = None
            if known:
                stale_seq = _int(known, "assigned_seq")
                entry = self._db.get_item(
                    TableName=self.streams_table, Key={"stream": _s(stream), "seq": _n(stale_seq)}, ConsistentRead=True
                ).get("Item")
                if entry:
                    return stale_seq, _str(entry, "message"), False
            head = self._db.get_item(TableName=self.streams_table, Key=head_key, ConsistentRead=True).get("Item") or {}
            last = _int(head, "last_seq")
            seq = last + 1
            message = message_for_seq(seq)
            expires = _n(int(self.clock()) + self._settings.history_seconds)
            reasons = self._transact(
                [
                    {
                        "Put": {
                            "TableName": self.streams_table,
                            "Item": {
                                "stream": _s(stream),
                                "seq": _n(seq),
                                "message": _s(message),
                                "expires_at": expires,
                            },
                        }
                    },
                    {
                        "Put": {
                            "TableName": self.streams_table,
                            "Item": {**marker_key, "assigned_seq": _n(seq), "expires_at": expires},
                            # New, or known but its entry expired (seq 0 is never assigned).
                            "ConditionExpression": "attribute_not_exists(assigned_seq) OR assigned_seq = :old",
                            "ExpressionAttributeValues": {":old": _n(stale_seq or 0)},
                        }
                    },
                    {
                        "Update": {
                            "TableName": self.streams_table,
                            "Key": head_key,
                            "UpdateExpression": "SET last_seq = :seq, last_message = :m, last_message_seq = :seq",
                            "ConditionExpression": "attribute_not_exists(last_seq) OR last_seq = :last",
                            "ExpressionAttributeValues": {":m": _s(message), ":seq": _n(seq), ":last": _n(last)},
                        }
                    },
                ]
            )
            if reasons is not None:
                continue  # another writer sequenced this event or this stream first: look again
            return seq, message, True
        raise RuntimeError(f"could not sequence event {event_id} on {stream}: too much contention")

    def sequence_new_events(
        self, events: Sequence[tuple[str, str, Callable[[int], str]]]
    ) -> list[tuple[int, str]] | None:
        """Sequence a batch of events never seen before in one read and one transaction.

        `events` are (stream, event id, render) in the order they arrived; each
        gets the next seq of its stream, in that order. This is the events
        queue's common case, and it costs one BatchGetItem and one
        TransactWriteItems for the whole batch instead of three calls an event.
        Returns the (seq, message) of each, or None with nothing written when
        it does not apply: an event was sequenced before (a redelivery), a head
        moved between the read and the write, or the batch does not fit one
        transaction. The caller then gives each event to `sequence_event`,
        which handles all of those one at a time.
        """
        ids = [event_id for _, event_id, _ in events]
        streams = list(dict.fromkeys(stream for stream, _, _ in events))
        if not events or len(set(ids)) != len(ids) or 2 * len(events) + len(streams) > TRANSACTION_ACTIONS:
            return None
        found = self._stream_items([(EVENT_PREFIX + event_id, 0) for event_id in ids] + [(s, 0) for s in streams])
        if any((EVENT_PREFIX + event_id, 0) in found for event_id in ids):
            return None
        read = {stream: _int(found.get((stream, 0), {}), "last_seq") for stream in streams}
        last = dict(read)
        expires = _n(int(self.clock()) + self._settings.history_seconds)
        placed: list[tuple[int, str]] = []
        items: list[dict[str, Any]] = []
        for stream, event_id, render in events:
            last[stream] += 1
            seq = last[stream]
            message = render(seq)
            placed.append((seq, message))
            entry = {"stream": _s(stream), "seq": _n(seq), "message": _s(message), "expires_at": expires}
            marker = {
                "stream": _s(EVENT_PREFIX + event_id),
                "seq": _n(0),
                "assigned_seq": _n(seq),
                "expires_at": expires,
            }
            items.append({"Put": {"TableName": self.streams_table, "Item": entry}})
            items.append(
                {
                    "Put": {
                        "TableName": self.streams_table,
                        "Item": marker,
                        "ConditionExpression": "attribute_not_exists(assigned_seq)",
                    }
                }
            )
        newest = {stream: (seq, message) for (stream, _, _), (seq, message) in zip(events, placed, strict=True)}
        for stream, (seq, message) in newest.items():
            items.append(
                {
                    "Update": {
                        "TableName": self.streams_table,
                        "Key": {"stream": _s(stream), "seq": _n(0)},
                        "UpdateExpression": "SET last_seq = :seq, last_message = :m, last_message_seq = :seq",
                        "ConditionExpression": "attribute_not_exists(last_seq) OR last_seq = :last",
                        "ExpressionAttributeValues": {":m": _s(message), ":seq": _n(seq), ":last": _n(read[stream])},
                    }
                }
            )
        # Each message is written twice (its entry and its stream's head); keep well inside the cap.
        if 2 * sum(len(message.encode()) for _, message in placed) > TRANSACTION_BYTES * 3 // 4:
            return None
        return placed if self._transact(items) is None else None

    def stream_head(self, stream: str) -> StreamHead:
        found = self._db.get_item(
            TableName=self.streams_table, Key={"stream": _s(stream), "seq": _n(0)}, ConsistentRead=True
        ).get("Item")
        return _stream_head(stream, found)

    def stream_heads(self, streams: Iterable[str]) -> dict[str, StreamHead]:
        """Where several streams stand, as `stream_head` reads each one, by stream in the order given."""
        wanted = list(dict.fromkeys(streams))
        found = self._stream_items([(stream, 0) for stream in wanted])
        return {stream: _stream_head(stream, found.get((stream, 0))) for stream in wanted}

    def _stream_items(self, keys: Iterable[tuple[str, int]]) -> dict[tuple[str, int], dict[str, Any]]:
        """Items of the streams table by (stream, seq), read consistently; absent keys are left out.

        BatchGetItem, up to 100 keys a call. Keys DynamoDB leaves unprocessed
        (throttling, its 16 MB answer cap) are asked again with the store's
        backoff, a bounded number of times; whatever is still left is read one
        GetItem at a time, so a busy table slows the answer down but never
        leaves an item out or reads one stale.
        """
        wanted = list(dict.fromkeys(keys))  # BatchGetItem refuses a key named twice
        found: dict[tuple[str, int], dict[str, Any]] = {}
        left: list[dict[str, Any]] = []
        for chunk in _chunks(wanted, BATCH_GET_KEYS):
            request = [{"stream": _s(stream), "seq": _n(seq)} for stream, seq in chunk]
            for attempt in range(self.backoff.attempts):
                response = self._db.batch_get_item(
                    RequestItems={self.streams_table: {"Keys": request, "ConsistentRead": True}}
                )
                for item in response.get("Responses", {}).get(self.streams_table, []):
                    found[(_str(item, "stream"), _int(item, "seq"))] = item
                request = (response.get("UnprocessedKeys") or {}).get(self.streams_table, {}).get("Keys", [])
                if not request:
                    break
                if attempt + 1 < self.backoff.attempts:
                    self.backoff.wait(attempt)
            left.extend(request)
        for key in left:
            item = self._db.get_item(TableName=self.streams_table, Key=key, ConsistentRead=True).get("Item")
            if item:
                found[(_str(item, "stream"), _int(item, "seq"))] = item
        return found

    def history_after(self, stream: str, after_seq: int, limit: int) -> list[HistoryEntry]:
        """Retained messages of a stream after `after_seq`, oldest first, expired ones left out."""
        # Newest first with a Limit, so a long-absent client costs at most `limit` reads;
        # retention is a count as well as an age.
        now = int(self.clock())
        page = self._db.query(
            TableName=self.streams_table,
            KeyConditionExpression="#s = :s AND seq > :after",
            ExpressionAttributeNames={"#s": "stream"},  # a DynamoDB reserved word (moto does not check key conditions)
            ExpressionAttributeValues={":s": _s(stream), ":after": _n(max(after_seq, 0))},
            ScanIndexForward=False,
            Limit=limit,
            ConsistentRead=True,
        )
        entries = [
            HistoryEntry(_int(item, "seq"), _str(item, "message"))
            for item in page.get("Items", [])
            if _int(item, "expires_at") >= now  # TTL deletion lags; an expired entry is no longer retained
        ]
        entries.reverse()
        return entries

    # ------------------------------------------------------------ helpers

    def _scan_pages(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Scan page by page, each page read with the store's retries (a paginator would bypass them)."""
        while True:
            page = self._db.scan(**kwargs)
            yield page
            last = page.get("LastEvaluatedKey")
            if not last:
                return
            kwargs["ExclusiveStartKey"] = last

    def _query(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        while True:
            page = self._db.query(**kwargs)
            yield from page.get("Items", [])
            last = page.get("LastEvaluatedKey")
            if not last:
                return
            kwargs["ExclusiveStartKey"] = last


def _failed(reasons: list[dict[str, Any]], index: int) -> bool:
    """Whether the transaction item at `index` was cancelled by its own condition."""
    return len(reasons) > index and reasons[index].get("Code") == CONDITION_FAILED


def _counter_outcome(reason: dict[str, Any]) -> Outcome:
    """A failed connection counter: with the row it saw, the limit is reached; without one, the connection is gone."""
    return Outcome.LIMIT if reason.get("Item") else Outcome.GONE


def _stream_head(stream: str, item: dict[str, Any] | None) -> StreamHead:
    """A stream's head row as the domain reads it: a stream without one has seen no message yet."""
    if not item:
        return StreamHead(stream)
    return StreamHead(stream, _int(item, "last_seq"), _str(item, "last_message") or None)


def _subscription_json(subscription: Subscription) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "stream_key": subscription.stream_key,
        "interval": subscription.interval,
        "filters": subscription.filters,
    }
    if subscription.latest_only:
        entry["latest_only"] = True
    return entry


def _window_step(item: dict[str, Any] | None, bucket: int) -> int:
    """Which of count_in_window's steps fits a rate item as it stands (its buckets as a refusal returned them)."""
    if not item or "cur_bucket" not in item:
        return 3
    current = _int(item, "cur_bucket")
    if current >= bucket:
        return 0 if current == bucket else 1
    return 2 if current == bucket - 1 else 3


def _chunks(values: Sequence[_T], size: int) -> Iterable[Sequence[_T]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]

"""The deployable shape of the service, declared once.

The CDK stack (infra/) and the local stack (local/) both build their tables,
queues, event bus, rules, functions and WebSocket routes from these
declarations, so the two can never drift apart. Plain data only: importing this
module costs nothing at Lambda cold start.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# ---------------------------------------------------------------- observability

# Every function's POWERTOOLS_SERVICE_NAME (the `service` of each log line and the metrics'
# service dimension the alarms select) and the CloudWatch namespace of its metrics.
SERVICE_NAME = "quanttrade-websocket"
METRICS_NAMESPACE = "QuantTrade"

# ---------------------------------------------------------------- DynamoDB


@dataclass(frozen=True)
class Index:
    name: str
    partition_key: str
    sort_key: str | None = None
    # Whole rows: cleanup reads a connection's rows through its index, and a keys-only
    # projection would cost a second read for each.
    projection: str = "ALL"


@dataclass(frozen=True)
class Table:
    """A DynamoDB table. Every key attribute is a string unless listed in `number_keys`."""

    logical_id: str
    env_var: str
    partition_key: str
    sort_key: str | None = None
    ttl_attribute: str = "expires_at"
    indexes: tuple[Index, ...] = ()
    number_keys: frozenset[str] = frozenset()
    stream: bool = False

    def key_type(self, attribute: str) -> str:
        return "N" if attribute in self.number_keys else "S"


# One item per live connection (pk = API Gateway connection id), plus other
# kinds with a TTL of their own: `session#<id>` snapshots kept after a disconnect
# so a client can resume, `spent#<jti>` markers of used session tokens,
# `user#<id>` with the set of the user's open connection ids (the per-user cap),
# and `rate#<scope>` sliding-window counters (connects per user, room messages).
CONNECTIONS = Table(logical_id="ConnectionsTable", env_var="CONNECTIONS_TABLE", partition_key="pk")

# One item per (stream key, connection). Fan-out Queries the stream key; the
# by_connection index lets $disconnect find what a connection owns without a Scan.
SUBSCRIPTIONS = Table(
    logical_id="SubscriptionsTable",
    env_var="SUBSCRIPTIONS_TABLE",
    partition_key="stream_key",
    sort_key="connection_id",
    indexes=(Index("by_connection", "connection_id", "stream_key"),),
)

# One item per (room, member) plus a `#meta` item holding the member count that
# makes room capacity a conditional write. The meta item has no connection_id,
# so the by_connection index stays sparse.
ROOMS = Table(
    logical_id="RoomsTable",
    env_var="ROOMS_TABLE",
    partition_key="room",
    sort_key="member_id",
    indexes=(Index("by_connection", "connection_id", "room"),),
)

# Per data stream: a head item (seq = 0) with the sequence counter and the last
# value, and the retained history items (seq = 1, 2, ...) that resume replays.
# `event#<id>` items remember which seq an upstream event got, so a redelivered
# event keeps it.
STREAMS = Table(
    logical_id="StreamsTable",
    env_var="STREAMS_TABLE",
    partition_key="stream",
    sort_key="seq",
    number_keys=frozenset({"seq"}),
)

TABLES: tuple[Table, ...] = (CONNECTIONS, SUBSCRIPTIONS, ROOMS, STREAMS)

# ---------------------------------------------------------------- messaging

# The stack names its bus `<EVENT_BUS_NAME>-<stage>` (infra/context.py), so
# stages share an account; upstream services take the name from the stack's
# EventBusName output.
EVENT_BUS_NAME = "quanttrade"


@dataclass(frozen=True)
class Queue:
    logical_id: str
    env_var: str
    visibility_timeout_seconds: int
    fifo: bool = False
    # FIFO high throughput: the send quota and deduplication apply per message group
    # (FifoThroughputLimit perMessageGroupId, DeduplicationScope messageGroup).
    high_throughput: bool = False
    max_receive_count: int = 5

    @property
    def dlq_logical_id(self) -> str:
        return f"{self.logical_id}Dlq"

    @property
    def dlq_env_var(self) -> str:
        return self.env_var.replace("_URL", "_DLQ_URL")


# FIFO: sequence numbers are given out and delivered in the order events leave
# their message group, so no client sees an older message of a stream after a
# newer one. Market data is grouped per symbol (through its pipe, below), every
# other source in one group of its own; high throughput, so the send quota is
# per group rather than 300 calls/s for the whole queue (docs/adr/0002).
EVENTS_QUEUE = Queue(
    logical_id="EventsQueue",
    env_var="EVENTS_QUEUE_URL",
    visibility_timeout_seconds=60,
    fifo=True,
    high_throughput=True,
)
# Delivery chunks of large audiences and retries of failed posts. FIFO grouped
# by stream and chunk so each connection keeps its per-stream order.
DELIVERY_QUEUE = Queue(
    logical_id="DeliveryQueue", env_var="DELIVERY_QUEUE_URL", visibility_timeout_seconds=60, fifo=True
)
# Standard: where the market-data rule puts events for the pipe to group by symbol. No function reads
# it (the pipe does); its DLQ takes events the pipe could not place (no symbol to group by).
MARKET_DATA_INGEST_QUEUE = Queue(
    logical_id="MarketDataIngestQueue", env_var="MARKET_DATA_INGEST_QUEUE_URL", visibility_timeout_seconds=30
)
QUEUES: tuple[Queue, ...] = (EVENTS_QUEUE, DELIVERY_QUEUE, MARKET_DATA_INGEST_QUEUE)


@dataclass(frozen=True)
class Pipe:
    """An EventBridge Pipe from a standard ingest queue into a FIFO queue, each event in the message
    group its `group_id_path` names: an EventBridge rule's MessageGroupId is a fixed string, a pipe's
    target parameters take a JSON path into the event (`$.body...` for an SQS source)."""

    logical_id: str
    source: Queue
    target: Queue
    group_id_path: str
    # The EventBridge event id: a copy the rule or the pipe delivers twice is dropped by the FIFO queue
    # (within its 5 minute deduplication window, per message group).
    deduplication_id_path: str = "$.body.id"
    # The target gets the EventBridge event itself, as a rule would put it, not the pipe's SQS record.
    input_template: str = "<$.body>"
    batch_size: int = 10  # SendMessageBatch's maximum


MARKET_DATA_PIPE = Pipe(
    logical_id="MarketDataPipe",
    source=MARKET_DATA_INGEST_QUEUE,
    target=EVENTS_QUEUE,
    group_id_path="$.body.detail.symbol",
)
PIPES: tuple[Pipe, ...] = (MARKET_DATA_PIPE,)


@dataclass(frozen=True)
class Source:
    """An upstream service: its EventBridge source, the detail-type it sends, the stream type it feeds."""

    source: str
    detail_type: str
    stream_type: str
    # None: the rule sends to the events queue in the source's one message group. A pipe: the rule
    # sends to the pipe's ingest queue and the pipe groups the events by stream.
    pipe: Pipe | None = None

    @property
    def rule_logical_id(self) -> str:
        name = self.source.split(".", 1)[1].title().replace("-", "")
        return f"{name}Rule"

    @property
    def message_group(self) -> str:
        return self.source.split(".", 1)[1]


SOURCES: tuple[Source, ...] = (
    Source("quanttrade.market-data", "MarketData", "market_data", pipe=MARKET_DATA_PIPE),
    Source("quanttrade.prediction", "Prediction", "predictions"),
    Source("quanttrade.alerting", "Alert", "alerts"),
    Source("quanttrade.performance", "Performance", "performance"),
    Source("quanttrade.market-regime", "MarketRegime", "market_regime"),
    Source("quanttrade.system", "SystemStatus", "system_status"),
)

# ---------------------------------------------------------------- functions


@dataclass(frozen=True)
class Function:
    """A Lambda function: its handler, what it may touch, and how it is triggered."""

    name: str
    handler: str  # module.attribute under handlers/
    reads: tuple[Table, ...] = ()
    writes: tuple[Table, ...] = ()
    posts_to_connections: bool = False
    consumes: Queue | None = None
    sends_to: tuple[Queue, ...] = ()
    # Sends straight to this queue's DLQ: invalid events go there at once instead of
    # blocking their FIFO message group through five failed receives.
    dead_letters_of: Queue | None = None
    timeout_seconds: int = 10
    memory_mb: int = 256
    batch_size: int = 10
    # The queue mapping's MaximumConcurrency (None: up to what the queue allows).
    max_concurrency: int | None = None
    extra_env: dict[str, str] = field(default_factory=dict)


AUTHORIZER = Function("authorizer", "authorizer.handler", timeout_seconds=5, memory_mb=256)
CONNECT = Function("connect", "connect.handler", reads=(CONNECTIONS,), writes=(CONNECTIONS,))
DISCONNECT = Function(
    "disconnect",
    "disconnect.handler",
    reads=(CONNECTIONS, SUBSCRIPTIONS, ROOMS),
    writes=(CONNECTIONS, SUBSCRIPTIONS, ROOMS),
)
MESSAGE = Function(
    "message",
    "message.handler",
    reads=(CONNECTIONS, SUBSCRIPTIONS, ROOMS, STREAMS),
    writes=(CONNECTIONS, SUBSCRIPTIONS, ROOMS),
    posts_to_connections=True,
)
FANOUT = Function(
    "fanout",
    "fanout.handler",
    reads=(CONNECTIONS, SUBSCRIPTIONS, ROOMS, STREAMS),
    writes=(CONNECTIONS, SUBSCRIPTIONS, ROOMS, STREAMS),
    posts_to_connections=True,
    consumes=EVENTS_QUEUE,
    sends_to=(DELIVERY_QUEUE,),
    dead_letters_of=EVENTS_QUEUE,
    timeout_seconds=30,
    memory_mb=1024,
)
DELIVERY = Function(
    "delivery",
    "delivery.handler",
    reads=(CONNECTIONS, SUBSCRIPTIONS, ROOMS),
    writes=(CONNECTIONS, SUBSCRIPTIONS, ROOMS),
    posts_to_connections=True,
    consumes=DELIVERY_QUEUE,
    timeout_seconds=30,
    memory_mb=1024,
    batch_size=10,
    # One delivery function keeps post_concurrency (64) posts in flight at ~28 ms each: about 2,300
    # posts/s, so five are the account's 10,000 Management API calls/s. Eight keep the quota full while
    # some wait on their next batch; their 429s are retried until the deadline, not failed (without that
    # policy more functions only fail posts and redeliver whole chunks). The AWS model with 8: 100,000
    # subscribers in 10.6 s warm, 11.1 s cold (2026-12-03); 12.1 s with 5 and minutes uncapped when measured
    # before the fan-out's CPU per row was modelled (bench/README.md).
    max_concurrency=8,
)
SWEEPER = Function(
    "sweeper",
    "sweeper.handler",
    reads=(CONNECTIONS, SUBSCRIPTIONS, ROOMS),
    writes=(CONNECTIONS, SUBSCRIPTIONS, ROOMS),
    posts_to_connections=True,
    timeout_seconds=300,
)
ADMIN = Function("admin", "admin.handler", reads=(CONNECTIONS, SUBSCRIPTIONS, ROOMS, STREAMS))

FUNCTIONS: tuple[Function, ...] = (AUTHORIZER, CONNECT, DISCONNECT, MESSAGE, FANOUT, DELIVERY, SWEEPER, ADMIN)

# ---------------------------------------------------------------- WebSocket API

ROUTE_SELECTION_EXPRESSION = "$request.body.action"
ACTIONS: tuple[str, ...] = (
    "hello",
    "subscribe",
    "unsubscribe",
    "joinRoom",
    "leaveRoom",
    "sendRoomMessage",
    "ping",
    "refresh",
    "resume",
)
# route key -> function. Every action and $default go to the message function,
# which replies through the Management API (so no route response is configured).
ROUTES: dict[str, Function] = {
    "$connect": CONNECT,
    "$disconnect": DISCONNECT,
    "$default": MESSAGE,
    **{action: MESSAGE for action in ACTIONS},
}
AUTHORIZER_IDENTITY_SOURCE = "route.request.querystring.token"

# Admin HTTP API routes (IAM-authorised on AWS); the local gateway serves the same.
ADMIN_ROUTES: tuple[str, ...] = (
    "GET /connections/{connection_id}",
    "GET /connections/{connection_id}/subscriptions",
    "GET /rooms/{room}/members",
    "GET /stats",
)

"""Subscribe and unsubscribe: streams, their permissions and the level's subscription budget."""

from __future__ import annotations

from quanttrade_protocol.messages import StreamsChangedPayload, SubscribedPayload
from quanttrade_ws.auth import Identity
from quanttrade_ws.models import Subscription
from quanttrade_ws.protocol import (
    ErrorCode,
    MessageType,
    Permission,
    ProtocolError,
    StreamId,
    StreamSpec,
    StreamType,
    Subscribe,
    Unsubscribe,
    subscription_cost,
)
from quanttrade_ws.service.core import ActionContext, ServiceCore
from quanttrade_ws.store.ports import Outcome
from quanttrade_ws.store.subscriptions import SUBSCRIPTIONS_PER_TRANSACTION


class SubscriptionActions(ServiceCore):
    """The `subscribe` and `unsubscribe` actions."""

    def _subscribe(self, ctx: ActionContext, frame: Subscribe) -> None:
        # A stream named twice counts once (the last spelling of its interval and filters wins).
        specs = list({spec.key: spec for spec in frame.streams}.values())
        for spec in specs:
            self._check_stream(ctx.connection.identity, spec, ctx.request_id)
        limit = self.limits.subscriptions_for(ctx.connection.identity.subscription_level)
        subscriptions = [
            Subscription(
                stream_key=spec.key,
                connection_id=ctx.connection.connection_id,
                user_id=ctx.connection.identity.user_id,
                interval=spec.interval,
                filters=spec.filters.as_dict(),
                token_expires_at=ctx.connection.identity.token_expires_at,
                latest_only=spec.latest_only,
            )
            for spec in specs
        ]
        added: list[str] = []
        new: set[str] = set()  # of `added`, the streams this frame subscribed (not ones it refreshed)
        # Several streams go in one transaction (a frame of 50 was 50 sequential ones, past the
        # function's timeout on a slow table). More than a transaction holds (the frame allows 50
        # today) go in consecutive transactions, in the frame's order.
        for start in range(0, len(subscriptions), SUBSCRIPTIONS_PER_TRANSACTION):
            chunk = subscriptions[start : start + SUBSCRIPTIONS_PER_TRANSACTION]
            batch = [(subscription, subscription_cost(subscription.stream_key)) for subscription in chunk]
            if len(chunk) > 1 and self.store.add_subscriptions(batch, limit):
                added.extend(subscription.stream_key for subscription in chunk)
                new.update(subscription.stream_key for subscription in chunk)
                continue
            # One stream, or a batch refused as a whole (a stream already subscribed, the limit, the
            # connection gone): one transaction per stream, which refreshes what is already there and
            # stops exactly where the limit is reached.
            if not self._subscribe_each(ctx, chunk, limit, added, new):
                return  # the connection is gone: nobody to answer
        # Where each single-symbol stream stands: the seq just before this subscription's first
        # message, so a client dropped before any message arrives can still resume from there.
        # One BatchGetItem for the frame (for one stream it costs what a GetItem does).
        heads = self.store.stream_heads(spec.key for spec in specs if spec.symbol)
        # Only to streams this frame added: one a client already held has had it, and re-sending a frame
        # of held streams must not buy a post per stream.
        last_values = {
            key: head.last_message
            for key, head in heads.items()
            if head.last_message and key in new and key.startswith(f"{StreamType.MARKET_DATA.value}:")
        }
        last_seq = {key: head.last_seq - (1 if key in last_values else 0) for key, head in heads.items()}
        self._answer(
            ctx,
            MessageType.SUBSCRIBE,
            SubscribedPayload(
                success=True, message=f"Subscribed to {', '.join(added)}", streams=added, last_seq=last_seq
            ),
        )
        # A new market data subscriber gets the latest known value at once (last value cache).
        for message in last_values.values():
            self.gateway.post(ctx.connection.connection_id, message.encode())

    def _subscribe_each(
        self, ctx: ActionContext, subscriptions: list[Subscription], limit: int, added: list[str], new: set[str]
    ) -> bool:
        """Subscribe one stream after another, appending each one done to `added` (and to `new` if it was not
        already subscribed).

        Raises SUBSCRIPTION_LIMIT, naming what this frame added before it, at the first stream
        over the limit; False if the connection went away meanwhile.
        """
        for subscription in subscriptions:
            key = subscription.stream_key
            outcome = self.store.add_subscription(subscription, limit, cost=subscription_cost(key))
            if outcome is Outcome.LIMIT:
                raise ProtocolError(
                    ErrorCode.SUBSCRIPTION_LIMIT,
                    f"Subscription limit of {limit} reached for the {ctx.connection.identity.subscription_level} level"
                    + (f" ({key} counts as {subscription_cost(key)})" if subscription_cost(key) > 1 else "")
                    + (f"; subscribed to {', '.join(added)} before the limit" if added else ""),
                    ctx.request_id,
                )
            if outcome is Outcome.GONE:
                return False
            added.append(key)
            if outcome is Outcome.DONE:
                new.add(key)
        return True

    def _check_stream(self, identity: Identity, spec: StreamSpec, request_id: str | None) -> None:
        # The filters were checked when the frame was parsed: each stream type has its own model.
        if not identity.can(Permission.to_read(spec.stream_type)):
            raise ProtocolError(ErrorCode.FORBIDDEN, f"No permission to read {spec.stream_type.value}", request_id)

    def _unsubscribe(self, ctx: ActionContext, frame: Unsubscribe) -> None:
        keys = dict.fromkeys(spec.key for spec in frame.streams)  # a stream named twice counts once
        removed = [
            key
            for key in keys
            if self.store.remove_subscription(key, ctx.connection.connection_id, cost=subscription_cost(key))
        ]
        self._answer(
            ctx,
            MessageType.UNSUBSCRIBE,
            StreamsChangedPayload(
                success=True,
                message=f"Unsubscribed from {', '.join(removed)}" if removed else "Was not subscribed",
                streams=removed,
            ),
        )


def may_read(identity: Identity, stream: str) -> bool:
    """Whether the identity may read a stream or subscription key (`market_data:AAPL`, `alerts:*`, `alerts`)."""
    stream_id = StreamId.parse(stream)
    return stream_id is not None and identity.can(Permission.to_read(stream_id.stream_type))

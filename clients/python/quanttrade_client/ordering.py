"""Exactly once, in order, per stream.

Fan-out gives every message of a stream a `seq`, and the same message can reach
a client twice: on both connections while a proactive reconnect overlaps, from
a resume's replay and live at once, or from an SQS redelivery. Gaps are normal
(filters and intervals skip messages), so order is enforced by dropping
anything at or below the last delivered `seq`, never by waiting for a missing one.
"""

from __future__ import annotations

from collections.abc import Iterable

from quanttrade_client.messages import Message


class StreamOrder:
    def __init__(self) -> None:
        # Least recently advanced first: a resume may name at most 100 streams, and the
        # ones that moved last are the ones most likely to have a gap worth replaying.
        self._last_seq: dict[str, int] = {}

    @property
    def last_seq(self) -> dict[str, int]:
        return dict(self._last_seq)

    def start_at(self, stream: str, seq: int) -> None:
        """Where a new subscription's stream stands (the subscribe reply says): a resume before its
        first message replays from here. Never moves a stream that has already delivered."""
        self._last_seq.setdefault(stream, seq)

    def admit(self, message: Message) -> bool:
        """Whether the application should see this data message; records it as delivered if so."""
        assert message.stream is not None and message.seq is not None
        last = self._last_seq.get(message.stream)
        if last is not None and message.seq <= last:
            return False
        self._last_seq.pop(message.stream, None)
        self._last_seq[message.stream] = message.seq
        return True

    def release(self, buffered: Iterable[Message]) -> list[Message]:
        """The messages a connection held back while resuming, ready for the application.

        Replayed and live messages of one stream arrive interleaved in any order;
        each stream is sorted by seq into the positions its messages arrived in,
        so streams stay interleaved as they came while each one is in order.
        """
        held = list(buffered)
        positions: dict[str, list[int]] = {}
        for index, message in enumerate(held):
            positions.setdefault(message.stream or "", []).append(index)
        placed: list[Message] = list(held)
        for indexes in positions.values():
            for index, message in zip(indexes, sorted((held[i] for i in indexes), key=_seq), strict=True):
                placed[index] = message
        return [message for message in placed if self.admit(message)]

    def forget(self, stream: str) -> None:
        """Start a stream afresh: its server-side sequence restarted below what this client has seen."""
        self._last_seq.pop(stream, None)


def _seq(message: Message) -> int:
    return message.seq or 0

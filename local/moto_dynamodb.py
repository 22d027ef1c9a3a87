"""moto's DynamoDB made to behave like DynamoDB where the local stack depends on it.

Applied in the moto server process the local stack runs (`local.moto_server`),
so `make dev`, the tests, the soak and the benchmarks share one moto.
"""

from __future__ import annotations

from typing import Any


def patch() -> None:
    """Make moto's DynamoDB behave like DynamoDB where the local stack depends on it: per-request atomicity,
    and transactions that cost what they touch.

    moto 5.2 answers TransactWriteItems by deep-copying every table the
    transaction names, to restore it wholesale if a condition fails. A
    subscribe (a Put on the subscriptions table and an Update on the connection
    row) therefore costs time in proportion to both tables: measured here at
    ~19 transactions/s with 1,000 rows, falling as rows grow, so subscribing
    5,000 clients is quadratic and takes far longer than the whole benchmark may.
    The copy also races other request threads ("dictionary changed size during
    iteration" -> HTTP 500 -> the client gets INTERNAL), and a rollback puts back
    a stale table, losing writes other threads made meanwhile.

    Here each DynamoDB request runs under one lock (DynamoDB makes every request
    atomic; moto's server threads do not), and a transaction snapshots only the
    items it names, restoring exactly those on failure. The tables object moto
    "copies" is the live one, so its own wholesale restore becomes a no-op.
    """
    import copy
    import threading

    from moto.dynamodb import models
    from moto.dynamodb.models.table import Table
    from moto.dynamodb.responses import DynamoHandler

    if getattr(models, "_quanttrade_patched", False):
        return
    lock = threading.RLock()
    call_action = DynamoHandler.call_action

    def atomic_call_action(self: Any) -> Any:
        with lock:
            return call_action(self)

    class TablesAreNotCopied:
        # Stands in for the `copy` module inside moto.dynamodb.models, whose only other use is per item.
        @staticmethod
        def deepcopy(value: Any, memo: Any = None) -> Any:
            return value if isinstance(value, Table) else copy.deepcopy(value, memo)

    transact_write_items = models.DynamoDBBackend.transact_write_items

    def item_level_transaction(self: Any, transact_items: list[dict[str, Any]]) -> None:
        snapshots = []
        for entry in transact_items:
            try:
                operation, request = next(iter(entry.items()))
                table = self.tables[request["TableName"]]
                if operation == "Put":
                    names = [table.hash_key_attr] + ([table.range_key_attr] if table.range_key_attr else [])
                    key = {name: request["Item"][name] for name in names}
                else:
                    key = request["Key"]
                hash_key, range_key = self.get_keys_value(table, key)
            except Exception:
                continue  # moto itself rejects the request before it changes anything
            snapshots.append((table, hash_key, range_key, copy.deepcopy(table.get_item(hash_key, range_key))))
        try:
            transact_write_items(self, transact_items)
        except BaseException:
            for table, hash_key, range_key, before in reversed(snapshots):
                if before is None:
                    table.delete_item(hash_key, range_key)
                elif range_key is not None:
                    table.items[hash_key][range_key] = before
                else:
                    table.items[hash_key] = before
            raise

    DynamoHandler.call_action = atomic_call_action  # type: ignore[method-assign]
    models.copy = TablesAreNotCopied  # type: ignore[assignment]
    models.DynamoDBBackend.transact_write_items = item_level_transaction  # type: ignore[method-assign]
    models._quanttrade_patched = True  # type: ignore[attr-defined]

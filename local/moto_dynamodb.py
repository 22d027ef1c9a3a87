"""moto's DynamoDB made to behave like DynamoDB where the local stack depends on it.

Applied in the moto server process the local stack runs (`local.moto_server`),
so `make dev`, the tests, the soak and the benchmarks share one moto.
"""

from __future__ import annotations

import base64
import copy
import ctypes
import ctypes.util
import json
import logging
import threading
import time
from datetime import datetime
from typing import Any

logger = logging.getLogger("quanttrade.local.moto")

# Every DynamoDB request of the server, and the TTL sweep, hold this: DynamoDB makes each request atomic.
REQUEST_LOCK = threading.RLock()


class _QueryState(threading.local):
    shared = False  # whether this thread is inside a Query, whose matching items moto need not copy


_QUERY_RESULTS = _QueryState()

# The data-plane answers: plain DynamoDB JSON (items, keys, counts, capacity), written out as it is.
PLAIN_ANSWERS = frozenset(
    {
        "GetItem",
        "BatchGetItem",
        "Query",
        "Scan",
        "PutItem",
        "UpdateItem",
        "DeleteItem",
        "BatchWriteItem",
        "TransactGetItems",
        "TransactWriteItems",
    }
)
# How often expired items are deleted (DynamoDB TTL). DynamoDB itself gives no bound ("within a few days");
# a minute keeps the local tables, and moto's memory, at what the service keeps alive.
DEFAULT_TTL_SWEEP_SECONDS = 60.0
# DynamoDB's TTL leaves alone an item whose expiry is more than five years in the past (a value in
# milliseconds or some other unit, most likely), so the sweep does too.
TTL_IGNORED_AFTER_SECONDS = 5 * 365 * 24 * 3600
# Update expressions kept parsed: the service writes a few dozen distinct texts.
PARSED_EXPRESSIONS = 1024
# moto's attribute value class, bound by `patch`: moto itself is imported only where it serves.
_DynamoType: Any = None


def patch() -> None:
    """Make moto's DynamoDB behave like DynamoDB where the local stack depends on it: per-request atomicity,
    and transactions and queries that cost what they touch.

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

    moto 5.2 writes every answer through a serializer that walks the
    operation's output shape value by value: measured here at 0.5 s of CPU for
    a Query page of 1,000 subscriptions, about 70% of it in the serializer. The
    data-plane answers are DynamoDB JSON already (attribute values, keys,
    counts), so they are written with json.dumps; binary values and times are
    encoded as the serializer does (base64, epoch seconds) and absent members
    are left out. Errors and control-plane answers still take moto's serializer.

    moto 5.2 also answers a Query on a table's key by listing and sorting every
    item of the table, then keeping those of the asked partition: each fan-out's
    audience Query, each history read, cost time in proportion to the whole
    table, so the stack slowed as subscriptions and history grew. Here a Query
    of the table reads only its partition, as DynamoDB does, and a Query of an
    index picks its partition's items without sorting the whole table first.

    moto 5.2 also spends most of an UpdateItem on the update expression: it
    parses the text twice, deep-copies the tree, and each of the validator's
    passes rebuilds its table of node types twice per node (measured here at
    3.4 ms of CPU for a rate-window step, backend only). Here a text is parsed
    once and copied from its pickle, and the passes look their method up once
    per node type: 1.4 ms (`_parse_update_expressions_once`, `_walk_trees_by_type`).
    The checks that depend only on the text, its names and the key schema are
    made once for each, and a condition's text is split into tokens once
    (`_check_update_expressions_once`, `_lex_conditions_once`): ~0.9 ms. A condition parsed for the same
    text, names and values is not parsed again (`_reuse_parsed_conditions`).

    A Query's answer (the fan-out's audience: 1,000 subscriptions) cost moto 0.27 s: it deep-copied the matching
    items, projected each through plain Python values and boto3's serializer, and converted the answer twice.
    Here the items are not copied (the answer is written under the request lock), a projection of top-level
    names picks the stored attributes (`_project_names_directly`), and the answer is converted once: ~0.1 s.
    Its items are sized, and its sort keys compared, without moto's per-value type calls
    (`_size_flat_attributes_directly`, `_compare_strings_directly`), and scalar values are written as stored.

    A stored item holds its key once and shares its attribute names (`_store_items_compactly`): a quarter
    less memory for each history entry and event marker, which the 300 s replay window keeps by the thousand.
    """
    from moto.core.responses import ActionResult
    from moto.dynamodb import models
    from moto.dynamodb.models import table as table_module
    from moto.dynamodb.models.table import Table
    from moto.dynamodb.models.utilities import dynamo_to_dict
    from moto.dynamodb.responses import DynamoHandler, DynamoResult

    if getattr(models, "_quanttrade_patched", False):
        return
    global _DynamoType
    from moto.dynamodb.models.dynamo_type import DynamoType

    _DynamoType = DynamoType
    lock = REQUEST_LOCK
    call_action = DynamoHandler.call_action

    def atomic_call_action(self: Any) -> Any:
        with lock:
            return call_action(self)

    class TablesAreNotCopied:
        # Stands in for the `copy` module inside moto.dynamodb.models, whose only other use is per item.
        @staticmethod
        def deepcopy(value: Any, memo: Any = None) -> Any:
            return value if isinstance(value, Table) else copy.deepcopy(value, memo)

    class QueryResultsAreNotCopied:
        # Stands in for the `copy` module inside moto.dynamodb.models.table. moto deep-copies a Query's matching
        # items before it filters and projects them, so that its answer cannot change under it: here the answer
        # is written under the request lock, so nothing can, and the copy was a sixth of moto's CPU while an
        # event went to 1,000 subscribers (py-spy). Every other copy there (a Scan's, a backup's) is made.
        @staticmethod
        def deepcopy(value: Any, memo: Any = None) -> Any:
            return value if _QUERY_RESULTS.shared and isinstance(value, list) else copy.deepcopy(value, memo)

        copy = staticmethod(copy.copy)

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

    base_query = Table.query

    def partition_query(self: Any, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
        index_name = args[6] if len(args) > 6 else kwargs.get("index_name")
        conditions = kwargs.get("hash_key_conditions")
        if not index_name:
            table = _OnePartition(self, hash_key)
        elif conditions:
            table = _IndexPartition(self, conditions)
        else:
            table = self
        _QUERY_RESULTS.shared = True
        try:
            return base_query(table, hash_key, *args, **kwargs)
        finally:
            _QUERY_RESULTS.shared = False

    serialized = DynamoResult.execute_result

    def unconverted(self: Any, result: object) -> None:
        # moto converts the whole result to plain values here, before anyone knows the operation, and a
        # data-plane answer was then walked a second time to write it: `plain_json` converts it, once, for
        # whichever writer the operation takes (moto may still add members to the result before then).
        ActionResult.__init__(self, result)

    def plain_json(self: Any, context: Any) -> Any:
        if context.operation_model.name not in PLAIN_ANSWERS or isinstance(self.result, BaseException):
            self._result = dynamo_to_dict(self.result)
            return serialized(self, context)
        content_type = f"application/x-amz-json-{context.service_model.metadata['jsonVersion']}"
        return 200, {"Content-Type": content_type}, json.dumps(_plain(self.result))

    DynamoResult.__init__ = unconverted  # type: ignore[method-assign]
    DynamoResult.execute_result = plain_json  # type: ignore[method-assign]
    DynamoHandler.call_action = atomic_call_action  # type: ignore[method-assign]
    Table.query = partition_query  # type: ignore[method-assign]
    table_module.copy = QueryResultsAreNotCopied  # type: ignore[assignment]
    models.copy = TablesAreNotCopied  # type: ignore[assignment]
    models.DynamoDBBackend.transact_write_items = item_level_transaction  # type: ignore[method-assign]
    _parse_update_expressions_once()
    _check_update_expressions_once()
    _lex_conditions_once()
    _reuse_parsed_conditions()
    _walk_trees_by_type()
    _project_names_directly()
    _size_flat_attributes_directly()
    _compare_strings_directly()
    _keep_no_empty_partitions()
    _store_items_compactly()
    models._quanttrade_patched = True  # type: ignore[attr-defined]


def _parse_update_expressions_once() -> None:
    """moto parses an UpdateExpression's text on every request, twice, and each validation deep-copies the
    tree before working on it. Here each text is parsed once; its tree is only read, and a validation gets
    its own copy from the tree's pickle, five times faster than deepcopy (~40 against ~220 us)."""
    import functools
    import pickle

    from moto.dynamodb.parsing import validators
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser

    parse = UpdateExpressionParser.make.__func__  # type: ignore[attr-defined]
    pickled: dict[int, tuple[Any, bytes]] = {}  # id(tree) -> (tree, its pickle); the tree held keeps the id its own

    @functools.lru_cache(maxsize=PARSED_EXPRESSIONS)
    def parsed(text: str) -> Any:
        tree = parse(UpdateExpressionParser, text)
        if len(pickled) >= PARSED_EXPRESSIONS:
            pickled.clear()
        pickled[id(tree)] = (tree, pickle.dumps(tree, protocol=pickle.HIGHEST_PROTOCOL))
        return tree

    def copy_tree(value: Any, memo: Any = None) -> Any:
        known = pickled.get(id(value))
        if known is not None and known[0] is value:
            return pickle.loads(known[1])
        return copy.deepcopy(value, memo)

    UpdateExpressionParser.make = classmethod(lambda cls, text: parsed(text))  # type: ignore[method-assign, assignment]
    validators.deepcopy = copy_tree  # type: ignore[attr-defined]


def _check_update_expressions_once() -> None:
    """moto's first three passes over an update expression check only the expression, its names and the
    table's key schema (one clause of each kind, no overlapping paths, no key attribute updated): they read
    neither the item nor the values, and change nothing. A tree that passed them with those names and that
    key schema is not checked again; one that failed fails every time, as before. They were ~40% of a
    validation (10 passes, each walking the whole tree)."""
    from moto.dynamodb.parsing import validators

    static_passes = (
        validators.ActionCountValidator,
        validators.OverlappingPathsValidator,
        validators.UpdateHashRangeKeyValidator,
    )
    passed: dict[int, tuple[Any, set[Any]]] = {}  # id(tree) -> (tree, the (names, key schema) it passed with)
    validator_init = validators.Validator.__init__

    def init_keeping_the_tree(self: Any, expression: Any, *args: Any, **kwargs: Any) -> None:
        validator_init(self, expression, *args, **kwargs)
        self.quanttrade_tree = expression

    def validate(self: Any) -> Any:
        tree = self.quanttrade_tree
        context = (tuple(sorted((self.expression_attribute_names or {}).items())), tuple(self.table.table_key_attrs))
        known = passed.get(id(tree))
        checked = known is not None and known[0] is tree and context in known[1]
        static = len(static_passes)
        if not all(isinstance(p, kind) for p, kind in zip(self.processors, static_passes, strict=False)):
            static, checked = 0, False  # another moto's passes: run them all, as moto does
        node = self.node_to_validate
        for index, processor in enumerate(self.processors):
            if checked and index < static:
                continue
            node = processor.traverse(node)
            if index == static - 1:
                if len(passed) >= PARSED_EXPRESSIONS and id(tree) not in passed:
                    passed.clear()
                passed.setdefault(id(tree), (tree, set()))[1].add(context)
        return node

    validators.Validator.__init__ = init_keeping_the_tree  # type: ignore[method-assign]
    validators.UpdateExpressionValidator.validate = validate  # type: ignore[method-assign]


def _lex_conditions_once() -> None:
    """moto splits a condition expression's text into tokens on every request (regular expressions tried
    one after another at each position: ~40% of parsing a condition). The tokens depend on the text alone,
    and are immutable tuples, so each text is split once; each parse gets its own sequence of them."""
    import collections
    import functools

    from moto.dynamodb.comparisons import ConditionExpressionParser

    lex = ConditionExpressionParser._lex_condition_expression

    @functools.lru_cache(maxsize=PARSED_EXPRESSIONS)
    def tokens(parser_type: type, text: str) -> tuple[Any, ...]:
        parser = parser_type.__new__(parser_type)
        parser.condition_expression = text
        return tuple(lex(parser))

    def lex_once(self: Any) -> Any:
        return collections.deque(tokens(type(self), self.condition_expression))

    ConditionExpressionParser._lex_condition_expression = lex_once  # type: ignore[method-assign]


def _reuse_parsed_conditions() -> None:
    """moto parses a condition expression into a tree of operations on every request, twice for an
    UpdateItem (its handler parses it to see which names and values it uses, its backend to evaluate it):
    ~0.3 ms of CPU each, even with its tokens kept, and 14% of moto's CPU while clients connect and
    subscribe. The tree, and the names and values the parse finds, depend only on the text, its names and
    its values; the tree is only read afterwards (every operation sets its fields once, in its
    constructor). So a parse for one request serves the next with the same three, and the stack's
    conditions mostly repeat them exactly: the counters' limits, and values that are the current second.
    A parse that fails is not kept, and fails again the next time."""
    import collections

    from moto.dynamodb.comparisons import ConditionExpressionParser

    parse = ConditionExpressionParser.parse
    # (text, names, values) -> (tree, the names it uses, the values it uses), the least recently used first
    parsed: collections.OrderedDict[tuple[str, str, str], tuple[Any, tuple[str, ...], tuple[str, ...]]]
    parsed = collections.OrderedDict()

    def parse_once(self: Any) -> Any:
        try:
            key = (
                self.condition_expression,
                json.dumps(self.expression_attribute_names, sort_keys=True),
                json.dumps(self.expression_attribute_values, sort_keys=True),
            )
        except (TypeError, ValueError):
            return parse(self)
        known = parsed.get(key)
        if known is None:
            tree = parse(self)
            parsed[key] = (tree, tuple(self.expr_attr_names_found), tuple(self.expr_attr_values_found))
            if len(parsed) > PARSED_EXPRESSIONS:
                parsed.popitem(last=False)
            return tree
        parsed.move_to_end(key)
        tree, names_found, values_found = known
        self.expr_attr_names_found.extend(names_found)
        self.expr_attr_values_found.extend(values_found)
        return tree

    ConditionExpressionParser.parse = parse_once  # type: ignore[method-assign]


def _walk_trees_by_type() -> None:
    """moto's tree passes ask each node, against abstract classes, whether it is a node and which of the
    pass's methods takes it, building the pass's table (`_processing_map()`) anew twice per node; and
    `find_clauses` asks the same of every child. The answers depend only on the node's type and the pass,
    so they are looked up once per type. The walks are moto's: children first, then the node, a processed
    node taking its place in its parent."""
    from moto.dynamodb.parsing.ast_nodes import (  # type: ignore[attr-defined]
        DepthFirstTraverser,
        Expression,
        Node,
        UpdateExpressionFunction,
    )

    is_node: dict[type, bool] = {}
    descends: dict[type, bool] = {}  # find_clauses looks inside expressions and functions only

    functions: dict[tuple[type, type], Any] = {}  # (pass, node type) -> the pass's function for it, or None

    def traverse(self: Any, root: Any) -> Any:
        pass_type = type(self)
        pre_processing_of_child = self.pre_processing_of_child

        def processor_for(node_type: type) -> Any:
            key = (pass_type, node_type)
            if key not in functions:
                # Every pass's table maps node types to its own bound methods: kept as plain functions, it
                # serves every instance of the pass (the validator makes new ones for each request).
                method = next(
                    (method for kind, method in self._processing_map().items() if issubclass(node_type, kind)),
                    None,
                )
                functions[key] = None if method is None else method.__func__
            function = functions[key]
            return None if function is None else function.__get__(self)

        def walk(node: Any, child_id: int) -> Any:
            node_type = type(node)
            if node_type not in is_node:
                is_node[node_type] = issubclass(node_type, Node)
            if not is_node[node_type]:
                return node
            parent_node = node.parent
            if node.children is not None:
                for index, child_node in enumerate(node.children):
                    pre_processing_of_child(node, index)
                    walk(child_node, index)
            processor = processor_for(node_type)
            if processor is not None:
                node = processor(node)
                node.parent = parent_node
                if parent_node:
                    parent_node.children[child_id] = node
            return node

        return walk(root, -1)

    def find_clauses(self: Any, clause_types: Any) -> list[Any]:
        clauses = []
        for child in self.children or ():
            child_type = type(child)
            if child_type in clause_types:
                clauses.append(child)
                continue
            if child_type not in descends:
                descends[child_type] = issubclass(child_type, Expression | UpdateExpressionFunction)
            if descends[child_type]:
                clauses.extend(child.find_clauses(clause_types))
        return clauses

    DepthFirstTraverser.traverse = traverse  # type: ignore[method-assign]
    Node.find_clauses = find_clauses  # type: ignore[method-assign]


def _project_names_directly() -> None:
    """moto projects an item by turning all of it into plain Python values, looking each path up in a deep copy,
    turning what it found back into attribute values through boto3's serializer, and building the new item one
    attribute at a time, each with a size check over everything already in it: 60% of moto's CPU for the fan-out's
    1,000-subscriber audience Query (py-spy). A projection of top-level names only, which is what the service asks
    for, here picks those attributes as stored, as a read without a projection returns them. The values are shared,
    not copied: the projected item is only read, to write this request's answer under the request lock. It skips
    the size check (the item passed it on write), as moto's own `Item.__deepcopy__` does. A path into a map or a
    list goes moto's way."""
    from moto.dynamodb.models.dynamo_type import Item, LimitedSizeDict

    project = Item.project

    def project_names(self: Any, projection_expressions: list[list[str]]) -> Any:
        if any(len(path) != 1 or "[" in path[0] for path in projection_expressions):
            return project(self, projection_expressions)
        projected = Item.__new__(Item)
        projected.hash_key = self.hash_key
        projected.range_key = self.range_key
        attrs = LimitedSizeDict.__new__(LimitedSizeDict)
        dict.__init__(attrs)
        for (name,) in projection_expressions:
            value = self.attrs.get(name)
            if value is not None:
                dict.__setitem__(attrs, name, value)
        projected.attrs = attrs
        return projected

    Item.project = project_names  # type: ignore[method-assign]


def _size_flat_attributes_directly() -> None:
    """moto sizes an item (for the 1 MB page of a Query or Scan, twice per item of a Query, and BatchGetItem's
    16 MB) through five type checks per attribute, each a method call: 64% of moto's Query handler for the
    fan-out's 1,000-row audience (cProfile). A string, binary, boolean or null attribute is sized here as
    moto's `DynamoType.size` sizes it, without the calls; numbers, sets, lists and maps still go moto's way
    (moto 5.2.6 sizes a number by its significant digits, as DynamoDB does; 5.2.5 by its text)."""
    from moto.dynamodb.models.dynamo_type import Item

    def size(self: Any) -> int:
        total = 0
        for key, value in self.attrs.items():
            total += len(key.encode("utf-8"))
            kind, inner = value.type, value.value
            if kind in _FLAT_KINDS and isinstance(inner, str | bytes | bool):
                if isinstance(inner, bool):
                    total += 1
                else:
                    total += len(inner if isinstance(inner, bytes) else inner.encode("utf-8"))
            else:
                total += value.size()
        return total

    Item.size = size  # type: ignore[method-assign]


def _compare_strings_directly() -> None:
    """moto orders two attribute values by their `cast_value`, five type checks each, for every comparison of a
    sort: a Query sorts its partition by the sort key twice (the partition read, then moto's own sort), about
    10,000 comparisons for a 1,000-row audience whose connection ids came in random order (20.8 ms). Two
    strings compare as their text here, which is what their cast values are (1.7 ms); every other pair goes
    moto's way."""
    from moto.dynamodb.models.dynamo_type import DynamoType

    less_than = DynamoType.__lt__

    def lt(self: Any, other: Any) -> bool:
        if self.type == "S" and other.type == "S":
            return bool(self.value < other.value)
        return bool(less_than(self, other))

    DynamoType.__lt__ = lt  # type: ignore[method-assign]


# Attribute types whose value moto sizes as its bytes (a bool value as 1): `DynamoType.size`'s last two cases.
_FLAT_KINDS = frozenset({"S", "B", "BOOL", "NULL"})


def _keep_no_empty_partitions() -> None:
    """A table with a sort key holds no partition without items, as DynamoDB stores none.

    moto keeps a table's partitions in a defaultdict, so a GetItem, a BatchGetItem, a DeleteItem or a
    refused transaction naming a key whose partition held nothing added an empty partition for good, and
    deleting a partition's last item left it: 0.35 to 0.37 KiB each (RSS of the stack's moto over 10,000 of
    each; 0.06 to 0.08 with this), for as long as moto ran. An unsubscribe from a stream the client never
    had is such a refused transaction, up to 50 a frame: a client could grow moto's memory without bound.
    Here a lookup adds nothing, and a partition goes with its last item.
    """
    from moto.dynamodb.models.table import Table

    get_item, delete_item = Table.get_item, Table.delete_item

    def get_item_adding_nothing(
        self: Any, hash_key: Any, range_key: Any = None, projection_expression: Any = None
    ) -> Any:
        if range_key and self.range_key_attr and hash_key not in self.items:
            return None  # only with a range key: a request without one still meets moto's own refusal
        return get_item(self, hash_key, range_key, projection_expression)

    def delete_item_and_emptied_partition(self: Any, hash_key: Any, range_key: Any) -> Any:
        if not (range_key and self.range_key_attr):
            return delete_item(self, hash_key, range_key)
        partition = self.items.get(hash_key)
        if partition is None:
            return None
        item = delete_item(self, hash_key, range_key)
        if not partition:
            del self.items[hash_key]
        return item

    Table.get_item = get_item_adding_nothing  # type: ignore[method-assign]
    Table.delete_item = delete_item_and_emptied_partition  # type: ignore[method-assign]


def _store_items_compactly() -> None:
    """An item holds one copy of its key values and shares its attribute names with every other item.

    moto builds each item's key twice, as the item's key and again among its attributes, and keeps each
    attribute name as the request's JSON decoded it: a string of its own per item. The replay history
    and its event markers are most of what moto holds (an entry and its marker cost 1.62 and 1.54 KiB of
    its heap, tracemalloc over 5,000 puts each), and at ten times the simulator's rate their 300 s window
    alone grew moto by about 56 MiB. Here the item's key attributes are its key objects (key values are
    scalars, which moto never changes in place, and no update may change a key) and attribute names are
    interned: 1.22 and 1.14 KiB. Interning short values as well cost more than it saved (most are unique:
    event ids, seqs), so values stay as they came.
    """
    import sys

    from moto.dynamodb.models.dynamo_type import Item, LimitedSizeDict

    intern = sys.intern

    def compact_init(self: Any, hash_key: Any, range_key: Any, attrs: dict[str, Any]) -> None:
        self.hash_key = hash_key
        self.range_key = range_key
        self.attrs = LimitedSizeDict()
        for name, value in attrs.items():
            self.attrs[intern(name)] = _key_or_new(value, hash_key, range_key)

    Item.__init__ = compact_init  # type: ignore[method-assign]


def _key_or_new(value: Any, hash_key: Any, range_key: Any) -> Any:
    """The key object, for an attribute whose value is the very string its key was made from; else a new one.

    CPython shares some equal strings (single characters, for one), so an attribute merely equal to the key may
    get the key object too: harmless, as moto never changes a scalar in place (a test updates such attributes).
    """
    if value.__class__ is dict and len(value) == 1:
        for key in (hash_key, range_key):
            if key is not None and value.get(key.type) is key.value:
                return key
    return _DynamoType(value)


def _plain(value: Any) -> Any:
    """A data-plane result as DynamoDB's JSON protocol writes it, in one pass over moto's own objects (what its
    `dynamo_to_dict` and serializer make of them): attribute values as `{type: value}`, no null members, blobs in
    base64, epoch times."""
    if value.__class__ is _DynamoType:  # first: an answer is mostly attribute values
        kind, inner = value.type, value.value
        if kind == "B":
            return {"B": _base64(inner)}
        if kind == "BS":
            return {"BS": [_base64(member) for member in inner]}
        if inner.__class__ is str or inner.__class__ is bool:
            return {kind: inner}  # S, N, BOOL, NULL: written as stored
        return {kind: _plain(inner)}
    if isinstance(value, datetime):
        return value.timestamp()
    if hasattr(value, "to_json"):
        return _plain(value.to_json())
    if isinstance(value, dict):
        return {key: _plain(member) for key, member in value.items() if member is not None}
    if isinstance(value, list | tuple):
        return [_plain(member) for member in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def _base64(value: bytes | str) -> str:
    """A stored blob in base64 (moto keeps one as it came over the wire, in base64, or as bytes after a projection);
    decoded and encoded again, as moto's serializer does, so the text is the canonical one."""
    return base64.b64encode(value if isinstance(value, bytes) else base64.b64decode(value)).decode()


class _OnePartition:
    """A table as moto's Query sees it, holding only one partition: Query reads `all_items()` and nothing
    else of the table's items, so the rest of moto's Query (conditions, paging, limits) applies unchanged."""

    def __init__(self, table: Any, hash_key: Any) -> None:
        self._table = table
        self._hash_key = hash_key

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)

    def all_items(self) -> list[Any]:
        stored = self._table.items.get(self._hash_key)  # .get: the table's defaultdict would add the key
        if stored is None:
            return []
        if not self._table.range_key_attr:
            return [stored]
        return sorted(stored.values(), key=lambda item: item.range_key)


class _IndexPartition(_OnePartition):
    """A table as moto's Query of an index sees it, holding only the items of the asked index partition.

    moto reads every item of the table for an index Query, sorted by the table's keys (each comparison a
    Python call), then keeps the partition's and sorts those by the index's keys: a connection's
    `by_connection` lookup, made on every `$disconnect`, cost time in proportion to every subscription of
    every client (at 1,000 clients, `$disconnect`s took seconds each behind moto's lock). Here the items
    are picked with moto's own test of the partition's key values, unsorted, since moto sorts what it
    keeps by the index's keys and the table's (which no two items share)."""

    def __init__(self, table: Any, conditions: list[tuple[str, Any]]) -> None:
        super().__init__(table, None)
        self._conditions = conditions

    def all_items(self) -> list[Any]:
        table = self._table
        stored = (
            (item for partition in table.items.values() for item in partition.values())
            if table.range_key_attr
            else iter(table.items.values())
        )
        return [item for item in stored if self._in_partition(item)]

    def _in_partition(self, item: Any) -> bool:
        for name, expected in self._conditions:
            value = item.attrs.get(name)
            if value is None:
                return False
            if expected.type == "S":  # moto's equality for strings (same type, same text), without its casts
                if value.type != "S" or value.value != expected.value:
                    return False
            elif value != expected:
                return False
        return True


def sweep_expired_items(now: float | None = None) -> int:
    """Delete every item whose TTL attribute has passed, in every table with TTL enabled, as DynamoDB's
    background TTL process does; returns how many were deleted.

    Without it moto keeps every stream-history entry, event marker and rate
    window the service writes with an expiry: memory grows for as long as the
    stack runs, and every Query of a history partition reads more items.
    """
    from moto.dynamodb.models import dynamodb_backends

    now = time.time() if now is None else now
    deleted = 0
    for account_backends in list(dynamodb_backends.values()):
        for backend in list(account_backends.values()):
            for table in list(backend.tables.values()):
                attribute = table.ttl.get("AttributeName") if table.ttl.get("TimeToLiveStatus") == "ENABLED" else None
                if attribute:
                    with REQUEST_LOCK:
                        deleted += _delete_expired(table, attribute, now)
    return deleted


def _expired(item: Any, attribute: str, now: float) -> bool:
    value = item.attrs.get(attribute)
    if value is None or value.type != "N":
        return False  # DynamoDB: only a Number attribute is an expiry time
    try:
        expires = float(value.value)
    except ValueError:
        return False
    return now - TTL_IGNORED_AFTER_SECONDS <= expires < now


def _delete_expired(table: Any, attribute: str, now: float) -> int:
    deleted = 0
    for hash_key, stored in list(table.items.items()):
        if table.range_key_attr:
            for range_key, item in list(stored.items()):
                if _expired(item, attribute, now):
                    table.delete_item(hash_key, range_key)  # the partition goes with its last item
                    deleted += 1
        elif _expired(stored, attribute, now):
            table.delete_item(hash_key, None)
            deleted += 1
    return deleted


def release_free_memory() -> bool:
    """Hand the pages the C allocator holds free back to the system (glibc's malloc_trim); whether it could.

    moto's items are many small, long-lived allocations made among short-lived
    request garbage from many threads: as items expire, the allocator keeps the
    pages between the survivors, and the process's resident size creeps up
    although its live objects do not. Trimming after each TTL sweep, when the
    most memory has just been freed, returns those pages. A no-op where the C
    library is not glibc.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True


def start_ttl_sweeper(interval: float) -> threading.Event:
    """Sweep expired items every `interval` seconds on a daemon thread; set the returned event to stop it."""
    if not interval > 0:
        # Not 0 or less: the wait below would return at once and the sweep would hold moto's lock in a loop.
        raise ValueError(f"a TTL sweep interval must be more than 0 seconds, not {interval!r}")
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(interval):
            try:
                deleted = sweep_expired_items()
            except Exception:  # a sweep must never take the server down; the next one tries again
                logger.exception("TTL sweep failed")
                continue
            if deleted:
                logger.debug("TTL sweep deleted %d expired items", deleted)
            release_free_memory()

    threading.Thread(target=run, name="dynamodb-ttl-sweeper", daemon=True).start()
    return stop

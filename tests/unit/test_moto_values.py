"""moto, patched, sizes items (Query and Scan pages, BatchGetItem) and orders attribute values as unpatched."""

from __future__ import annotations

from decimal import Decimal

import pytest
from moto.dynamodb.models.dynamo_type import DynamoType, Item
from moto.dynamodb.models.utilities import bytesize

from local.moto_dynamodb import patch

ATTRIBUTES = {
    "ascii": {"S": "market_data:BTC"},
    "ünïcødé key": {"S": "Zürich € 東京"},
    "empty": {"S": ""},
    "number": {"N": "2000000000"},
    "fraction": {"N": "-12.5e3"},
    "decimal": {"N": Decimal("0.0001")},
    "yes": {"BOOL": True},
    "no": {"BOOL": False},
    "nothing": {"NULL": True},
    "blob": {"B": b"\x00\xffbinary"},
    "blob as text": {"B": "YmluYXJ5"},
    "strings": {"SS": ["a", "bé"]},
    "numbers": {"NS": ["1", "22"]},
    "blobs": {"BS": [b"x", b"yz"]},
    "list": {"L": [{"S": "a"}, {"N": "1"}, {"BOOL": True}, {"M": {"k": {"S": "v"}}}]},
    "map": {"M": {"inner": {"S": "ü"}, "n": {"N": "3"}, "l": {"L": []}}},
}


def _as_moto_sizes_it(item: Item) -> int:
    # moto 5.2's Item.size, over its DynamoType.size (which the patch leaves alone).
    return sum(bytesize(key) + value.size() for key, value in item.attrs.items())


@pytest.mark.parametrize("name", sorted(ATTRIBUTES))
def test_each_attribute_type_is_sized_as_moto_sizes_it(name: str) -> None:
    patch()
    item = Item(DynamoType({"S": "pk"}), None, {"pk": {"S": "pk"}, name: ATTRIBUTES[name]})
    assert item.size() == _as_moto_sizes_it(item)


def test_an_item_of_every_type_is_sized_as_moto_sizes_it() -> None:
    patch()
    item = Item(DynamoType({"S": "pk"}), None, {"pk": {"S": "pk"}, **ATTRIBUTES})
    assert item.size() == _as_moto_sizes_it(item) > 100


def test_string_values_sort_in_moto_s_order_and_other_types_keep_theirs() -> None:
    # GIVEN sort keys as a Query's partition holds them: strings (connection ids, any order), and numbers
    patch()
    texts = ["conn-b", "Conn-a", "conn-a", "", "é", "z", "conn-a0"]
    numbers = ["10", "9", "-1.5", "1e3", "0"]

    # WHEN they are sorted as moto's Query sorts them
    by_text = sorted(DynamoType({"S": text}) for text in texts)
    by_number = sorted(DynamoType({"N": number}) for number in numbers)

    # THEN strings are in code point order (their cast values), numbers in numeric order
    assert [value.value for value in by_text] == sorted(texts)
    assert [value.value for value in by_number] == ["-1.5", "0", "9", "10", "1e3"]
    # AND a string and a number are still not comparable, as in moto
    with pytest.raises(TypeError):
        _ = DynamoType({"S": "1"}) < DynamoType({"N": "1"})

"""Evaluating IAM identity policies, as AWS decides whether a role may call an action on a resource.

The documents are the ones CloudFormation renders for a function's role
(`AWS::IAM::Policy` / inline `Policies` / managed policy documents), already
resolved to literal ARNs. What is evaluated, with AWS's semantics:

* `Statement` as a list or a single object; `Effect` Allow or Deny;
* `Action` / `NotAction`: case-insensitive, `*` and `?` wildcards (`dynamodb:Get*`);
* `Resource` / `NotResource`: case-sensitive, `*` and `?` wildcards, which may span
  `:` and `/` (as in `arn:aws:dynamodb:*:*:table/Prices*`), and policy variables
  (`${aws:username}`) taken from the request context; a variable the context
  does not supply makes the statement not match;
* `Condition`: every operator block must hold, every key within a block must
  hold, and a key holds when any of its values matches (for the negated
  operators: when none does). Supported: the String*, Arn*, Numeric*, Date*,
  Bool, IpAddress/NotIpAddress, BinaryEquals and Null operators, the `IfExists`
  suffix and the `ForAnyValue:` / `ForAllValues:` set qualifiers. Condition keys
  are case-insensitive; a key missing from the context fails positive operators
  and satisfies negated ones, as on AWS.
* An explicit Deny anywhere wins; otherwise any Allow allows; otherwise the
  implicit deny.

Documents are validated when parsed (`PolicySet.parse`): an unknown operator or
a statement without Effect/Action/Resource is an error at registration, not a
silent deny at request time.
"""

from __future__ import annotations

import base64
import enum
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

ContextValue = str | bool | int | float | Sequence[str]
Context = Mapping[str, ContextValue]


class PolicyError(ValueError):
    """A policy document that is not valid IAM."""


class Decision(enum.Enum):
    ALLOW = "allow"
    EXPLICIT_DENY = "explicit deny"
    IMPLICIT_DENY = "implicit deny"  # no statement allows it

    @property
    def allowed(self) -> bool:
        return self is Decision.ALLOW


_STRING_OPERATORS = {
    "StringEquals": (False, "equals"),
    "StringNotEquals": (True, "equals"),
    "StringEqualsIgnoreCase": (False, "iequals"),
    "StringNotEqualsIgnoreCase": (True, "iequals"),
    "StringLike": (False, "like"),
    "StringNotLike": (True, "like"),
    "ArnEquals": (False, "arn"),
    "ArnLike": (False, "arn"),
    "ArnNotEquals": (True, "arn"),
    "ArnNotLike": (True, "arn"),
    "NumericEquals": (False, "=="),
    "NumericNotEquals": (True, "=="),
    "NumericLessThan": (False, "<"),
    "NumericLessThanEquals": (False, "<="),
    "NumericGreaterThan": (False, ">"),
    "NumericGreaterThanEquals": (False, ">="),
    "DateEquals": (False, "date=="),
    "DateNotEquals": (True, "date=="),
    "DateLessThan": (False, "date<"),
    "DateLessThanEquals": (False, "date<="),
    "DateGreaterThan": (False, "date>"),
    "DateGreaterThanEquals": (False, "date>="),
    "Bool": (False, "bool"),
    "BinaryEquals": (False, "binary"),
    "IpAddress": (False, "ip"),
    "NotIpAddress": (True, "ip"),
}


@dataclass(frozen=True)
class _Condition:
    qualifier: str | None  # None, "ForAnyValue", "ForAllValues"
    operator: str  # a key of _STRING_OPERATORS, or "Null"
    if_exists: bool
    key: str  # lower-cased
    values: tuple[str, ...]


@dataclass(frozen=True)
class Statement:
    sid: str | None
    allow: bool
    actions: tuple[str, ...]
    not_action: bool
    resources: tuple[str, ...]
    not_resource: bool
    conditions: tuple[_Condition, ...]

    def applies(self, action: str, resource: str, context: Mapping[str, Any]) -> bool:
        action_hit = any(_matches_action(pattern, action) for pattern in self.actions)
        if action_hit == self.not_action:
            return False
        resource_hit = any(_matches_resource(pattern, resource, context) for pattern in self.resources)
        if resource_hit == self.not_resource:
            return False
        return all(_condition_holds(condition, context) for condition in self.conditions)


@dataclass(frozen=True)
class PolicySet:
    """Every identity policy of one principal, parsed once."""

    statements: tuple[Statement, ...]

    @classmethod
    def parse(cls, documents: Iterable[Mapping[str, Any]]) -> PolicySet:
        statements: list[Statement] = []
        for index, document in enumerate(documents):
            if not isinstance(document, Mapping):
                raise PolicyError(f"policy {index}: a policy document is an object, not {type(document).__name__}")
            raw = document.get("Statement")
            items = [raw] if isinstance(raw, Mapping) else raw
            if not isinstance(items, list) or not items:
                raise PolicyError(f"policy {index}: Statement must be an object or a non-empty list")
            for position, item in enumerate(items):
                statements.append(_parse_statement(item, f"policy {index} statement {position}"))
        return cls(tuple(statements))

    def evaluate(self, action: str, resource: str, context: Context | None = None) -> Decision:
        keyed = {key.lower(): value for key, value in (context or {}).items()}
        allowed = False
        for statement in self.statements:
            if not statement.applies(action, resource, keyed):
                continue
            if not statement.allow:
                return Decision.EXPLICIT_DENY
            allowed = True
        return Decision.ALLOW if allowed else Decision.IMPLICIT_DENY


def evaluate(
    documents: Iterable[Mapping[str, Any]], action: str, resource: str, context: Context | None = None
) -> Decision:
    """One-shot evaluation; parse a PolicySet once instead when the same documents decide many requests."""
    return PolicySet.parse(documents).evaluate(action, resource, context)


# ---------------------------------------------------------------- parsing


def _parse_statement(item: Any, where: str) -> Statement:
    if not isinstance(item, Mapping):
        raise PolicyError(f"{where}: a statement is an object")
    effect = item.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise PolicyError(f"{where}: Effect must be 'Allow' or 'Deny', not {effect!r}")
    if "Principal" in item or "NotPrincipal" in item:
        raise PolicyError(f"{where}: Principal belongs in resource-based policies, not identity policies")
    actions, not_action = _either(item, "Action", "NotAction", where)
    resources, not_resource = _either(item, "Resource", "NotResource", where)
    for action in actions:
        if action != "*" and ":" not in action:
            raise PolicyError(f"{where}: action {action!r} is not 'service:Action'")
    return Statement(
        sid=item.get("Sid"),
        allow=effect == "Allow",
        actions=tuple(action.lower() for action in actions),
        not_action=not_action,
        resources=tuple(resources),
        not_resource=not_resource,
        conditions=_parse_conditions(item.get("Condition"), where),
    )


def _either(item: Mapping[str, Any], positive: str, negative: str, where: str) -> tuple[list[str], bool]:
    if (positive in item) == (negative in item):
        raise PolicyError(f"{where}: exactly one of {positive} and {negative} is required")
    key = positive if positive in item else negative
    values = _strings(item[key], f"{where}: {key}")
    if not values:
        raise PolicyError(f"{where}: {key} is empty")
    return values, key == negative


def _strings(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(entry, str) for entry in value):
        return list(value)
    raise PolicyError(f"{where} must be a string or a list of strings (unresolved intrinsic function?): {value!r}")


def _parse_conditions(raw: Any, where: str) -> tuple[_Condition, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{where}: Condition is an object of operators")
    conditions: list[_Condition] = []
    for full_operator, block in raw.items():
        qualifier, _, operator = full_operator.rpartition(":")
        if qualifier not in ("", "ForAnyValue", "ForAllValues"):
            raise PolicyError(f"{where}: unknown set qualifier {qualifier!r}")
        if_exists = operator.endswith("IfExists") and operator != "IfExists"
        base = operator.removesuffix("IfExists") if if_exists else operator
        if base not in _STRING_OPERATORS and base != "Null":
            raise PolicyError(f"{where}: unsupported condition operator {full_operator!r}")
        if not isinstance(block, Mapping) or not block:
            raise PolicyError(f"{where}: {full_operator} needs an object of condition keys")
        for key, values in block.items():
            listed = [values] if isinstance(values, str | bool | int | float) else values
            if not isinstance(listed, list) or not listed:
                raise PolicyError(f"{where}: {full_operator} {key}: values must be a scalar or a non-empty list")
            texts = tuple(_text(value) for value in listed)
            for text in texts:
                _validate_value(base, text, f"{where}: {full_operator} {key}")
            conditions.append(_Condition(qualifier or None, base, if_exists, key.lower(), texts))
    return tuple(conditions)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise PolicyError(f"condition value {value!r} is not a string, number or boolean")


def _validate_value(operator: str, value: str, where: str) -> None:
    kind = _STRING_OPERATORS.get(operator, (False, "null"))[1]
    try:
        if kind in ("==", "<", "<=", ">", ">="):
            float(value)
        elif kind.startswith("date"):
            _date(value)
        elif kind == "ip":
            ipaddress.ip_network(value, strict=False)
        elif kind in ("bool", "null") and value.lower() not in ("true", "false"):
            raise ValueError(value)
    except ValueError:
        raise PolicyError(f"{where}: {value!r} is not a valid value for {operator}") from None


# ---------------------------------------------------------------- matching


@lru_cache(maxsize=4096)
def _glob(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    expression = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
    return re.compile(expression, re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _like(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    if "*" not in pattern and "?" not in pattern:
        return pattern.lower() == value.lower() if ignore_case else pattern == value
    return _glob(pattern, ignore_case).fullmatch(value) is not None


def _matches_action(pattern: str, action: str) -> bool:
    return _like(pattern, action.lower())


_VARIABLE = re.compile(r"\$\{([^}]+)\}")
_ESCAPES = {"*": "*", "?": "?", "$": "$"}


def _substitute(pattern: str, context: Mapping[str, Any]) -> str | None:
    """The pattern with its policy variables replaced, or None when the context lacks one of them."""
    if "${" not in pattern:
        return pattern
    missing = False

    def replace(match: re.Match[str]) -> str:
        nonlocal missing
        name = match.group(1)
        if name in _ESCAPES:
            # ${*} is a literal asterisk: escape it from the glob by a placeholder the matcher never sees.
            return {"*": "\x00", "?": "\x01", "$": "$"}[name]
        value = context.get(name.lower())
        if value is None or not isinstance(value, str):
            missing = True
            return ""
        return value.replace("*", "\x00").replace("?", "\x01")

    replaced = _VARIABLE.sub(replace, pattern)
    return None if missing else replaced


def _matches_resource(pattern: str, resource: str, context: Mapping[str, Any]) -> bool:
    if pattern == "*":
        return True
    concrete = _substitute(pattern, context)
    if concrete is None:
        return False
    if "\x00" in concrete or "\x01" in concrete:
        expression = re.escape(concrete).replace(r"\*", ".*").replace(r"\?", ".")
        expression = expression.replace("\x00", r"\*").replace("\x01", r"\?")
        return re.fullmatch(expression, resource, re.DOTALL) is not None
    return _like(concrete, resource)


def _matches_arn(pattern: str, arn: str) -> bool:
    # ArnLike/ArnEquals compare the six colon-separated parts one by one: a wildcard stays within its part.
    wanted = pattern.split(":", 5)
    actual = arn.split(":", 5)
    if len(wanted) != 6 or len(actual) != 6:
        return False
    return all(_like(part, value) for part, value in zip(wanted, actual, strict=True))


def _date(value: str) -> datetime:
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except ValueError:
        pass
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _one_matches(kind: str, expected: str, actual: str) -> bool:
    try:
        if kind == "equals":
            return expected == actual
        if kind == "iequals":
            return expected.lower() == actual.lower()
        if kind == "like":
            return _like(expected, actual)
        if kind == "arn":
            return _matches_arn(expected, actual)
        if kind == "bool":
            return expected.lower() == actual.lower()
        if kind == "binary":
            return base64.b64decode(expected) == base64.b64decode(actual)
        if kind == "ip":
            return ipaddress.ip_address(actual) in ipaddress.ip_network(expected, strict=False)
        if kind.startswith("date"):
            left, right = _date(actual), _date(expected)
            comparison = kind.removeprefix("date")
        else:
            left, right = float(actual), float(expected)  # type: ignore[assignment]
            comparison = kind
    except ValueError:
        return False  # a context value of the wrong type matches nothing, as on AWS
    return {
        "==": left == right,
        "<": left < right,
        "<=": left <= right,
        ">": left > right,
        ">=": left >= right,
    }[comparison]


def _condition_holds(condition: _Condition, context: Mapping[str, Any]) -> bool:
    raw = context.get(condition.key)
    present = raw is not None and raw != []
    if condition.operator == "Null":
        wants_absent = condition.values[0].lower() == "true"
        return wants_absent != present
    if not present:
        if condition.if_exists:
            return True
        negated = _STRING_OPERATORS[condition.operator][0]
        if condition.qualifier == "ForAllValues":
            return True  # vacuously: every one of no values matches
        return negated
    actuals = [_text(value) for value in raw] if isinstance(raw, list | tuple) else [_text(raw)]
    negated, kind = _STRING_OPERATORS[condition.operator]

    def value_matches(actual: str) -> bool:
        hit = any(_one_matches(kind, expected, actual) for expected in condition.values)
        return not hit if negated else hit

    if condition.qualifier == "ForAllValues":
        return all(value_matches(actual) for actual in actuals)
    if negated and condition.qualifier is None:
        return all(value_matches(actual) for actual in actuals)
    return any(value_matches(actual) for actual in actuals)

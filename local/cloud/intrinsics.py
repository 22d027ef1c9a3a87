"""CloudFormation intrinsic functions over local physical values.

Supported: Ref (resources, parameters with a literal Default, pseudo parameters),
Fn::GetAtt (list and dotted forms), Fn::Join, Fn::Sub (string and [string, map]
forms, `${!Literal}` escapes), Fn::Select, Fn::Split, Fn::Base64, Fn::GetAZs.
Anything else fails loudly with the path to the value: the local stack must not
run with a value it made up.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from typing import Any

from local.cloud.resources.resource import TemplateError

SUB_VARIABLE = re.compile(r"\$\{([^}]*)\}")


class UnresolvableError(TemplateError):
    """A value uses an intrinsic function, or points at something, that cannot be resolved locally."""


class Resolver:
    """Resolves template values given how to Ref and Fn::GetAtt a logical id, and the pseudo parameters."""

    def __init__(
        self,
        *,
        ref: Callable[[str], str],
        get_att: Callable[[str, str], str],
        pseudo: Mapping[str, str],
        parameters: Mapping[str, Any] | None = None,
    ) -> None:
        self._ref = ref
        self._get_att = get_att
        self._pseudo = dict(pseudo)
        self._parameters = dict(parameters or {})

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.resolve(item) for item in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, argument),) = value.items()
            if key == "Ref":
                return self.ref(argument)
            if key.startswith("Fn::"):
                return self._function(key, argument)
        return {key: self.resolve(item) for key, item in value.items()}

    def ref(self, name: str) -> str:
        if name in self._pseudo:
            return self._pseudo[name]
        if name.startswith("AWS::"):
            raise UnresolvableError(f"pseudo parameter {name} has no local value")
        if name in self._parameters:
            default = self._parameters[name].get("Default")
            parameter_type = str(self._parameters[name].get("Type", ""))
            if default is None or parameter_type.startswith("AWS::SSM::"):
                raise UnresolvableError(f"parameter {name} ({parameter_type}) has no value that resolves locally")
            return str(default)
        return self._ref(name)

    def _function(self, name: str, argument: Any) -> Any:
        if name == "Fn::GetAtt":
            logical_id, attribute = argument if isinstance(argument, list) else str(argument).split(".", 1)
            return self._get_att(logical_id, self.resolve(attribute))
        if name == "Fn::Join":
            delimiter, items = argument
            resolved = self.resolve(items)
            if not isinstance(resolved, list):
                raise UnresolvableError(f"Fn::Join needs a list, got {resolved!r}")
            return str(delimiter).join(_text(item, "Fn::Join") for item in resolved)
        if name == "Fn::Sub":
            return self._sub(argument)
        if name == "Fn::Select":
            index, items = argument
            resolved = self.resolve(items)
            position = int(self.resolve(index))
            if not isinstance(resolved, list) or not 0 <= position < len(resolved):
                raise UnresolvableError(f"Fn::Select index {position} out of range for {resolved!r}")
            return resolved[position]
        if name == "Fn::Split":
            delimiter, source = argument
            return _text(self.resolve(source), "Fn::Split").split(delimiter)
        if name == "Fn::Base64":
            return base64.b64encode(_text(self.resolve(argument), "Fn::Base64").encode()).decode()
        if name == "Fn::GetAZs":
            region = self.resolve(argument) or self._pseudo["AWS::Region"]
            return [f"{region}{zone}" for zone in "abc"]
        raise UnresolvableError(f"{name} is not resolved locally (argument {argument!r})")

    def _sub(self, argument: Any) -> str:
        if isinstance(argument, list):
            text, variables = argument
            variables = {key: self.resolve(item) for key, item in variables.items()}
        else:
            text, variables = argument, {}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return _text(variables[name], "Fn::Sub")
            if "." in name and not name.startswith("AWS::"):
                logical_id, attribute = name.split(".", 1)
                return self._get_att(logical_id, attribute)
            return self.ref(name)

        return SUB_VARIABLE.sub(replace, str(text))


def _text(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise UnresolvableError(f"{where} needs text, got {value!r}")

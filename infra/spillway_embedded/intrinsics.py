"""CloudFormation intrinsic functions, resolved against the values a provisioned stack knows."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

NO_VALUE = object()  # AWS::NoValue: the property is dropped
_SUB_VARIABLE = re.compile(r"\$\{([^}!][^}]*)\}")


class UnsupportedIntrinsic(ValueError):
    pass


class Resolver:
    def __init__(
        self,
        parameters: dict[str, Any],
        pseudo: dict[str, str],
        conditions: dict[str, Any],
        ref: Callable[[str], Any],
        get_att: Callable[[str, str], Any],
    ):
        self._parameters = parameters
        self._pseudo = pseudo
        self._conditions = conditions
        self._resource_ref = ref
        self._get_att = get_att
        self._condition_values: dict[str, bool] = {}

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [v for v in (self.resolve(item) for item in value) if v is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, argument), = value.items()
            if key == "Ref" or key.startswith("Fn::") or key == "Condition" and isinstance(argument, str):
                return self._intrinsic(key, argument)
        return {k: v for k, v in ((k, self.resolve(v)) for k, v in value.items()) if v is not NO_VALUE}

    def condition(self, name: str) -> bool:
        if name not in self._condition_values:
            if name not in self._conditions:
                raise KeyError(f"no condition named {name}")
            self._condition_values[name] = bool(self.resolve(self._conditions[name]))
        return self._condition_values[name]

    def _intrinsic(self, key: str, arg: Any) -> Any:
        handler = getattr(self, "_" + key.removeprefix("Fn::").lower(), None)
        if handler is None:
            raise UnsupportedIntrinsic(f"{key} is not supported by the embedded stack")
        return handler(arg)

    def _ref(self, name: str) -> Any:
        return self.ref(name)

    def _condition(self, name: str) -> bool:
        return self.condition(name)

    def _getatt(self, arg: Any) -> Any:
        logical, attribute = arg.split(".", 1) if isinstance(arg, str) else self.resolve(arg)
        return self._get_att(logical, attribute)

    def _sub(self, arg: Any) -> str:
        template, variables = (arg, {}) if isinstance(arg, str) else (arg[0], self.resolve(arg[1]))

        def value(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in variables:
                return str(variables[name])
            if "." in name and not name.startswith("AWS::"):
                logical, attribute = name.split(".", 1)
                return str(self._get_att(logical, attribute))
            return str(self.ref(name))

        return _SUB_VARIABLE.sub(value, template).replace("${!", "${")

    def _join(self, arg: list[Any]) -> str:
        delimiter, items = arg
        return str(delimiter).join(str(v) for v in self.resolve(items))

    def _select(self, arg: list[Any]) -> Any:
        index, items = self.resolve(arg)
        return items[int(index)]

    def _split(self, arg: list[Any]) -> list[str]:
        delimiter, text = self.resolve(arg)
        return str(text).split(delimiter)

    def _if(self, arg: list[Any]) -> Any:
        name, when_true, when_false = arg
        return self.resolve(when_true if self.condition(name) else when_false)

    def _equals(self, arg: list[Any]) -> bool:
        left, right = self.resolve(arg)
        return str(left) == str(right)

    def _not(self, arg: list[Any]) -> bool:
        return not self.resolve(arg[0])

    def _and(self, arg: list[Any]) -> bool:
        return all(self.resolve(a) for a in arg)

    def _or(self, arg: list[Any]) -> bool:
        return any(self.resolve(a) for a in arg)

    def _getazs(self, arg: Any) -> list[str]:
        region = self.resolve(arg) or self._pseudo["AWS::Region"]
        return [f"{region}{zone}" for zone in "abc"]

    def _tojsonstring(self, arg: Any) -> str:
        return json.dumps(self.resolve(arg))

    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self._pseudo:
            return self._pseudo[name]
        if name in self._parameters:
            return self._parameters[name]
        return self._resource_ref(name)


def references(value: Any) -> set[str]:
    """Logical ids a value refers to (Ref, GetAtt, Sub variables), to order creation."""
    found: set[str] = set()
    if isinstance(value, list):
        for item in value:
            found |= references(item)
    elif isinstance(value, dict):
        for key, arg in value.items():
            if key == "Ref" and isinstance(arg, str):
                found.add(arg)
            elif key == "Fn::GetAtt":
                found.add(arg.split(".", 1)[0] if isinstance(arg, str) else arg[0])
            elif key == "Fn::Sub":
                template = arg if isinstance(arg, str) else arg[0]
                found |= {name.split(".", 1)[0] for name in _SUB_VARIABLE.findall(template)}
                if not isinstance(arg, str):
                    found |= references(arg[1])
            else:
                found |= references(arg)
    return {name for name in found if not name.startswith("AWS::")}

"""Declaring a payload's fields as Golem properties or constraints (yapapi's `props.base`).

    @dataclass
    class MyPayload(Payload):
        runtime: str = constraint(inf.INF_RUNTIME_NAME, default="vm")
        min_mem_gib: float = constraint(inf.INF_MEM, ">=", default=0.5)

A field made by `constraint(key, operator, default)` or `prop(key, default)` is an ordinary
dataclass field that remembers its Golem name; `constraints_of(payload)` and `props_of(payload)`
read them back ("(golem.inf.mem.gib>=0.5)").
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

Operator = Literal["=", "<=", ">=", "<", ">"]
KEY, KIND, OPERATOR = "key", "golem_field", "operator"


def constraint(key: str, operator: Operator = "=", default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field that is a demand constraint `(key operator value)`."""
    return dataclasses.field(default=default, metadata={KEY: key, KIND: "constraint", OPERATOR: operator})


def prop(key: str, default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field that is a demand property `key = value`."""
    return dataclasses.field(default=default, metadata={KEY: key, KIND: "property"})


def _golem_fields(model: Any, kind: str) -> list[tuple[dataclasses.Field[Any], Any]]:
    return [(f, getattr(model, f.name)) for f in dataclasses.fields(model)
            if f.metadata.get(KIND) == kind and getattr(model, f.name) is not None]


def constraints_of(model: Any) -> list[str]:
    """The model's constraints as Golem writes them."""
    return [f"({f.metadata[KEY]}{f.metadata[OPERATOR]}{value.value if hasattr(value, 'value') else value})"
            for f, value in _golem_fields(model, "constraint")]


def props_of(model: Any) -> dict[str, Any]:
    """The model's properties by Golem name."""
    return {f.metadata[KEY]: value.value if hasattr(value, "value") else value
            for f, value in _golem_fields(model, "property")}

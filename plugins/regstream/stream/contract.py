"""The message contract, read from its JSON Schemas (`regstream/schemas/`): the one source of
the fields, their types, what is required and which versions exist. Pure Python.

Compatibility rule (docs/contract.md): a new version may only add optional fields; the
consumer accepts every version it has a schema file for, and reads only the fields the
counts use (`CONSUMED`), which every known version must require with the same type.
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from typing import Any

EVENT_TYPE = "customer_registered"
# What the counts read of each message; the parser skips the rest (names, e-mail, ...)
# cheaply: converting them costs a third of the throughput.
CONSUMED = ("schema_version", "event_id", "event_type", "customer_id", "store_id", "create_date")
_FILE = re.compile(rf"^{EVENT_TYPE}\.v(\d+)\.json$")


class ContractError(ValueError):
    """The schema files break the compatibility rule."""


@cache
def schemas() -> dict[int, dict[str, Any]]:
    """Every version's schema ({"key": ..., "value": ...}), by version number."""
    out: dict[int, dict[str, Any]] = {}
    for entry in resources.files("regstream").joinpath("schemas").iterdir():
        m = _FILE.match(entry.name)
        if m:
            out[int(m.group(1))] = json.loads(entry.read_text())
    if not out:
        raise ContractError(f"no {EVENT_TYPE}.v<N>.json schema in regstream/schemas")
    return out


def known_versions() -> tuple[int, ...]:
    return tuple(sorted(schemas()))


def field_type(prop: dict[str, Any]) -> str:
    """A property's kind: integer, string or timestamp (a date-time string)."""
    if "const" in prop:
        return "integer" if isinstance(prop["const"], int) else "string"
    types = prop["type"] if isinstance(prop["type"], list) else [prop["type"]]
    kind = next(t for t in types if t != "null")
    return "timestamp" if kind == "string" and prop.get("format") == "date-time" else kind


def value_fields(version: int) -> dict[str, str]:
    """Every field of a version's value, with its kind."""
    props = schemas()[version]["value"]["properties"]
    return {name: field_type(prop) for name, prop in props.items()}


def required(version: int) -> tuple[str, ...]:
    return tuple(schemas()[version]["value"]["required"])


@cache
def consumed_fields() -> dict[str, str]:
    """The fields the counts read, with their kinds, checked against every known version:
    a version that drops one, makes it optional or changes its kind breaks the rule."""
    first = value_fields(known_versions()[0])
    for version in known_versions():
        fields, needed = value_fields(version), required(version)
        for name in CONSUMED:
            if name not in needed or fields.get(name) != first[name]:
                raise ContractError(
                    f"{EVENT_TYPE} v{version} breaks the compatibility rule: field {name} must "
                    f"stay required and of kind {first[name]} (see docs/contract.md)"
                )
        older = set(value_fields(known_versions()[0]))
        added = set(fields) - older
        if not older <= set(fields) or added & set(needed):
            raise ContractError(
                f"{EVENT_TYPE} v{version} removes fields {sorted(older - set(fields))} or "
                f"requires new ones {sorted(added & set(needed))}: a new version may only add "
                "optional fields (see docs/contract.md)"
            )
    return {name: first[name] for name in CONSUMED}

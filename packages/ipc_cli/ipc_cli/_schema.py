"""What ``ipc`` does with a method's registered contract: check a JSON request against its
request schema, build a skeleton request from it, and name a schema's types in one line.

``ipc call`` sends its JSON request as MessagePack of the same plain values (a decimal as
the string or number written, a datetime as a string), and the service's Pydantic model
converts them. So a request is checked against the schema as Pydantic's lax mode reads such
values: where a node is marked ``x-msgpack`` as a datetime, a time or a timedelta, a number
(seconds) is accepted beside the string; formats are not checked (Pydantic accepts more
spellings than JSON Schema's formats, and says so itself if a value is wrong).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # loaded by the check itself: 'ipc describe' and '--help' need neither
    from jsonschema.exceptions import ValidationError

    from ipc_client_sdk import ContractVersion

_NUMBER_TOO = ("ext 2", "ext 4", "ext 5")
"""``x-msgpack`` kinds that Pydantic also reads from a number of seconds: datetime, time,
timedelta."""

_KINDS = {
    "ext 1": "decimal",
    "ext 2": "datetime",
    "ext 3": "date",
    "ext 4": "time",
    "ext 5": "timedelta",
    "ext 6": "uuid",
    "bin": "bytes",
}

_FORMAT_EXAMPLES = {
    "date-time": "2026-01-01T00:00:00+00:00",
    "date": "2026-01-01",
    "time": "00:00:00",
    "duration": "PT0S",
    "uuid": "00000000-0000-0000-0000-000000000000",
}

_MAX_DEPTH = 12
"""How deep a skeleton or a type name follows nested (or recursive) models."""


def _kind(node: dict[str, Any]) -> str | None:
    marker = node.get("x-msgpack")
    if not isinstance(marker, str):
        return None
    return next((k for k in _KINDS if marker == k or marker.startswith(k + ":")), None)


def as_sent_by_cli(schema: Any) -> Any:
    """``schema`` as it applies to the plain JSON values ``ipc call`` sends."""
    schema = copy.deepcopy(schema)

    def widen(node: Any) -> None:
        if isinstance(node, dict):
            if _kind(node) in _NUMBER_TOO and node.get("type") == "string":
                node["type"] = ["string", "number"]
            for value in node.values():
                widen(value)
        elif isinstance(node, list):
            for value in node:
                widen(value)

    widen(schema)
    return schema


def _first_error(schema: dict[str, Any], request: Any) -> ValidationError | None:
    """The most relevant error of ``request`` against ``schema``, or None when it fits
    (or when the schema is not one this checker reads: the service's own check decides)."""
    from jsonschema import Draft202012Validator  # noqa: PLC0415  # see the imports
    from jsonschema.exceptions import SchemaError, best_match  # noqa: PLC0415

    relaxed = as_sent_by_cli(schema)
    try:
        Draft202012Validator.check_schema(relaxed)
        error: ValidationError | None = best_match(
            Draft202012Validator(relaxed).iter_errors(request)
        )
    except SchemaError:
        return None
    except Exception:  # an unresolvable $ref and the like: the service checks it itself
        return None
    return error


def request_problem(target: str, versions: list[ContractVersion], request: Any) -> str | None:
    """Why ``request`` fits none of the registered request schemas of ``target``, in the
    schema's own words; None when it fits one (or none can be checked: no contract, an
    older SDK, a schema too large to register)."""
    checked = [v for v in versions if v.request is not None]
    problems = []
    for version in checked:
        assert version.request is not None
        error = _first_error(version.request, request)
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path) or "the request"
        problems.append(f"{error.message} (at {where})")
    if not problems:
        return None
    return (
        f"the request does not fit {target}'s registered request schema: {problems[0]}; "
        "see 'ipc call --example' and 'ipc describe', or send it unchecked with --no-check"
    )


def example(schema: Any) -> Any:
    """A skeleton value for ``schema``: every property of every object, with its default
    or a placeholder of its type (decimals as strings, times as ISO 8601 text)."""
    defs = schema.get("$defs", {}) if isinstance(schema, dict) else {}
    return _example(schema, defs, 0)


def _example(node: Any, defs: dict[str, Any], depth: int) -> Any:
    if not isinstance(node, dict) or depth > _MAX_DEPTH:
        return None
    if "$ref" in node:
        return _example(defs.get(str(node["$ref"]).rsplit("/", 1)[-1]), defs, depth + 1)
    for key in ("default", "const"):
        if key in node:
            return node[key]
    for key in ("enum", "examples"):
        if node.get(key):
            return node[key][0]
    kind = _kind(node)
    if kind == "ext 1":
        return "0"
    for key in ("anyOf", "oneOf", "allOf"):
        options = node.get(key) or []
        if options:
            useful = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return _example((useful or options)[0], defs, depth + 1)
    kind_of = node.get("type")
    if isinstance(kind_of, list):
        kind_of = next((t for t in kind_of if t != "null"), None)
    if kind_of == "object" or "properties" in node:
        properties = node.get("properties") or {}
        return {name: _example(sub, defs, depth + 1) for name, sub in properties.items()}
    if kind_of == "array":
        items = node.get("prefixItems")
        if items:
            return [_example(sub, defs, depth + 1) for sub in items]
        return [_example(node.get("items", {}), defs, depth + 1)]
    if kind_of == "string":
        return _FORMAT_EXAMPLES.get(str(node.get("format")), "")
    return {"integer": 0, "number": 0.0, "boolean": False}.get(str(kind_of))


def type_name(node: Any, depth: int = 0) -> str:
    """A schema's type in a few words: ``decimal``, ``list[string]``, ``Order``, ``A | B``."""
    if not isinstance(node, dict) or depth > _MAX_DEPTH:
        return "any"
    kind = _kind(node)
    if kind is not None:
        return _KINDS[kind]
    if "$ref" in node:
        return str(node["$ref"]).rsplit("/", 1)[-1]
    for key in ("anyOf", "oneOf"):
        if node.get(key):
            return " | ".join(type_name(o, depth + 1) for o in node[key])
    if "enum" in node:
        return " | ".join(repr(v) for v in node["enum"])
    kind_of = node.get("type")
    if kind_of == "array":
        return f"list[{type_name(node.get('items'), depth + 1)}]"
    if kind_of == "object" and "properties" not in node:
        extra = node.get("additionalProperties")
        return f"dict[string, {type_name(extra, depth + 1)}]" if extra else "object"
    if kind_of == "object":
        return str(node.get("title") or "object")
    if isinstance(kind_of, list):
        return " | ".join(str(k) for k in kind_of)
    return str(kind_of) if kind_of else "any"


def fields(schema: Any) -> list[tuple[str, str, bool]]:
    """An object schema's properties: (name, type, required); empty for any other schema."""
    if not isinstance(schema, dict):
        return []
    if "$ref" in schema:
        name = str(schema["$ref"]).rsplit("/", 1)[-1]
        schema = schema.get("$defs", {}).get(name, schema)
    required = set(schema.get("required") or [])
    return [
        (name, type_name(sub), name in required)
        for name, sub in (schema.get("properties") or {}).items()
    ]

"""Method contracts: each method's request and response as JSON Schema, for the registry.

Pydantic's own ``json_schema`` describes the types; the MessagePack-specific forms (see
``_codec.py`` and docs/protocol.md §5) are added to each such type under ``x-msgpack``, so
that a reader in another language knows that a decimal travels as extension 1 with its
exact text rather than as a float. A contract larger than ``MAX_CONTRACT_BYTES`` keeps its
durability and summary but not its schemas, and says so (``truncated``), so that a huge
model cannot bloat every registration; so does the largest of a service's contracts while
all of them together exceed ``MAX_CONTRACTS_BYTES``.
"""

from __future__ import annotations

import inspect
import json
import typing
from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from ipc_client_sdk._contracts import MAX_CONTRACTS_BYTES, MethodContract
from ipc_client_sdk._service import MethodSpec, Service

MAX_CONTRACT_BYTES = 32 * 1024
"""The largest contract (JSON text) one method registers."""

_WIRE = {
    "decimal": "ext 1: the decimal's exact text",
    "datetime": "ext 2: ISO 8601 text, offset kept; MessagePack timestamp (ext -1) accepted",
    "date": "ext 3: ISO 8601 date text",
    "time": "ext 4: ISO 8601 time text",
    "timedelta": "ext 5: [days, seconds, microseconds]",
    "uuid": "ext 6: 16 bytes",
    "bytes": "bin",
}


class WireJsonSchema(GenerateJsonSchema):
    """Pydantic's JSON Schema, with each MessagePack-specific type's wire form."""

    def decimal_schema(self, schema: core_schema.DecimalSchema) -> JsonSchemaValue:
        return {**super().decimal_schema(schema), "x-msgpack": _WIRE["decimal"]}

    def datetime_schema(self, schema: core_schema.DatetimeSchema) -> JsonSchemaValue:
        return {**super().datetime_schema(schema), "x-msgpack": _WIRE["datetime"]}

    def date_schema(self, schema: core_schema.DateSchema) -> JsonSchemaValue:
        return {**super().date_schema(schema), "x-msgpack": _WIRE["date"]}

    def time_schema(self, schema: core_schema.TimeSchema) -> JsonSchemaValue:
        return {**super().time_schema(schema), "x-msgpack": _WIRE["time"]}

    def timedelta_schema(self, schema: core_schema.TimedeltaSchema) -> JsonSchemaValue:
        return {**super().timedelta_schema(schema), "x-msgpack": _WIRE["timedelta"]}

    def uuid_schema(self, schema: core_schema.UuidSchema) -> JsonSchemaValue:
        return {**super().uuid_schema(schema), "x-msgpack": _WIRE["uuid"]}

    def bytes_schema(self, schema: core_schema.BytesSchema) -> JsonSchemaValue:
        return {**super().bytes_schema(schema), "x-msgpack": _WIRE["bytes"]}


def type_schema(annotation: Any, *, mode: typing.Literal["validation", "serialization"]) -> Any:
    """The JSON Schema of ``annotation`` (``{}``, any value, for ``Any``), or None when
    Pydantic cannot describe it."""
    if annotation is Any:
        return {}
    try:
        return TypeAdapter(annotation).json_schema(schema_generator=WireJsonSchema, mode=mode)
    except Exception:  # a type Pydantic cannot describe: the contract says nothing of it
        return None


def _returns(spec: MethodSpec) -> Any:
    try:
        return typing.get_type_hints(spec.handler).get("return", Any)
    except Exception:  # an annotation that does not resolve here
        return Any


def method_contract(spec: MethodSpec) -> dict[str, Any]:
    """One method's contract: ``request`` and ``response`` schemas, ``durable``, ``summary``
    (the docstring's first line), bounded to ``MAX_CONTRACT_BYTES``."""
    doc = inspect.getdoc(spec.handler) or ""
    contract: dict[str, Any] = {
        "request": type_schema(spec.request_type, mode="validation"),
        "response": type_schema(_returns(spec), mode="serialization"),
        "durable": spec.durable,
        "summary": doc.strip().splitlines()[0] if doc.strip() else "",
    }
    size = len(json.dumps(contract))
    if size > MAX_CONTRACT_BYTES:
        contract.update(request=None, response=None, truncated=size)
    return contract


def service_contracts(service: Service) -> dict[str, dict[str, Any]]:
    """Every method's contract, by method name."""
    return {name: method_contract(spec) for name, spec in sorted(service.methods.items())}


def registered_contracts(service: Service) -> dict[str, MethodContract]:
    """The contracts a registration carries: every method's, the largest ones truncated
    until all of them fit in ``MAX_CONTRACTS_BYTES``."""
    contracts = service_contracts(service)
    sizes = {name: len(json.dumps(c)) for name, c in contracts.items()}
    for name in sorted(sizes, key=sizes.__getitem__, reverse=True):
        if sum(sizes.values()) <= MAX_CONTRACTS_BYTES:
            break
        if contracts[name].get("truncated") is None:
            contracts[name].update(request=None, response=None, truncated=sizes[name])
            sizes[name] = len(json.dumps(contracts[name]))
    return {name: MethodContract.model_validate(c) for name, c in contracts.items()}

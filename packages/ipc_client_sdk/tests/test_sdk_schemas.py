"""Method contracts: JSON Schemas with the MessagePack wire forms, bounded in size."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, create_model

from ipc_client_sdk import CallContext, Service
from ipc_client_sdk._schemas import MAX_CONTRACT_BYTES, registered_contracts, service_contracts
from ipc_client_sdk.protocol import MAX_CONTRACTS_BYTES, MethodContract, contract_version


class WorkRequest(BaseModel):
    account: str
    price: Decimal
    placed_at: datetime
    ref: uuid.UUID
    blob: bytes = b""


class WorkResult(BaseModel):
    notional: Decimal


svc = Service("service_b")


@svc.method("do_work")
async def do_work(req: WorkRequest, ctx: CallContext) -> WorkResult:
    """Book the order.

    More text that is not the summary.
    """
    return WorkResult(notional=req.price)


@svc.method("quote", durable=False)
async def quote(req: dict[str, str]):  # type: ignore[no-untyped-def]
    return req


def test_a_contract_has_both_schemas_the_durability_and_the_summary() -> None:
    contract = service_contracts(svc)["do_work"]
    assert contract["durable"] is True
    assert contract["summary"] == "Book the order."
    fields = contract["request"]["properties"]
    assert contract["request"]["required"] == ["account", "price", "placed_at", "ref"]
    assert fields["price"]["x-msgpack"].startswith("ext 1")
    assert fields["placed_at"]["x-msgpack"].startswith("ext 2")
    assert "ext -1" in fields["placed_at"]["x-msgpack"]
    assert fields["ref"]["x-msgpack"].startswith("ext 6")
    assert fields["blob"]["x-msgpack"] == "bin"
    assert contract["response"]["properties"]["notional"]["x-msgpack"].startswith("ext 1")


def test_an_unannotated_response_is_any_value() -> None:
    contract = service_contracts(svc)["quote"]
    assert contract["durable"] is False
    assert contract["response"] == {}
    assert contract["request"] == {"type": "object", "additionalProperties": {"type": "string"}}


Huge = create_model(  # type: ignore[call-overload]
    "Huge", **{f"field_{i:04d}_with_a_long_name": (int, 0) for i in range(1500)}
)
big = Service("big")


@big.method("m")
async def huge_method(req: Huge) -> None:  # type: ignore[valid-type]
    return None


def test_a_contract_too_large_keeps_no_schema_and_says_so() -> None:
    contract = service_contracts(big)["m"]
    assert contract["request"] is None and contract["response"] is None
    assert contract["truncated"] > MAX_CONTRACT_BYTES


Large = create_model(  # type: ignore[call-overload]
    "Large", **{f"field_{i:04d}_with_a_long_name": (int, 0) for i in range(250)}
)


async def large_method(req: Large) -> None:  # type: ignore[valid-type]
    return None


many = Service("many")
for i in range(12):  # 12 methods of ~25 KiB each: more than a registration carries
    many.method(f"m{i:02d}")(large_method)


def test_a_registration_carries_at_most_max_contracts_bytes_truncating_the_largest() -> None:
    contracts = registered_contracts(many)
    assert sorted(contracts) == [f"m{i:02d}" for i in range(12)]
    size = sum(len(json.dumps(c.model_dump())) for c in contracts.values())
    assert size <= MAX_CONTRACTS_BYTES
    kept = [c for c in contracts.values() if c.request is not None]
    assert kept and len(kept) < 12
    assert all(c.truncated for c in contracts.values() if c.request is None)
    assert all(c.durable for c in contracts.values())


def test_a_version_changes_with_the_schemas_and_durability_not_the_summary() -> None:
    base = MethodContract(request={"type": "string"}, response={}, durable=True, summary="a")
    assert contract_version(base) == contract_version(base.model_copy(update={"summary": "b"}))
    assert contract_version(base) != contract_version(base.model_copy(update={"durable": False}))
    other = base.model_copy(update={"request": {"type": "integer"}})
    assert contract_version(base) != contract_version(other)
    assert len(contract_version(base)) == 12

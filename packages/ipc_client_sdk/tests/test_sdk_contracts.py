"""Contracts in the registry: instances register their methods' JSON Schemas at ``serve()``,
any router answers ``describe`` from its stores, and instances that disagree are reported."""

from __future__ import annotations

from decimal import Decimal

import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import KeyNotFoundError
from pydantic import BaseModel

from ipc_client_sdk import CallContext, IPCClient, RemoteError, Service
from ipc_client_sdk.protocol import (
    AdminOp,
    AdminReply,
    AdminRequest,
    Codec,
    Registration,
    Subjects,
)
from ipc_testing import NatsServerProcess, RouterProcess, eventually


class OrderV1(BaseModel):
    account: str
    price: Decimal


class OrderV2(BaseModel):
    account: str
    price: Decimal
    venue: str


class Booked(BaseModel):
    notional: Decimal


async def book_v1(req: OrderV1, ctx: CallContext) -> Booked:
    """Book an order."""
    return Booked(notional=req.price)


async def book_v2(req: OrderV2, ctx: CallContext) -> Booked:
    """Book an order."""
    return Booked(notional=req.price)


async def ping(req: str, ctx: CallContext) -> str:
    return req


def book_service(version: int) -> Service:
    svc = Service("books")
    svc.method("book")(book_v1 if version == 1 else book_v2)
    svc.method("ping", durable=False)(ping)
    return svc


async def test_describe_shows_each_method_schemas_durability_and_summary(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    async with IPCClient(nats_server.url, name="books") as server:
        await server.serve(book_service(1), instance_id="k1")
        found = await server.admin.describe("books")
        assert found.service == "books" and found.without_contracts == []
        assert [m.method for m in found.methods] == ["book", "ping"]
        book = found.methods[0]
        assert book.consistent and book.contract is not None
        assert book.contract.instances == ["k1"]
        assert book.contract.request is not None
        assert book.contract.request["properties"]["price"]["x-msgpack"].startswith("ext 1")
        assert book.contract.response is not None
        assert book.contract.response["title"] == "Booked"
        assert (book.contract.durable, book.contract.summary) == (True, "Book an order.")
        ping = (await server.admin.describe("books", "ping")).methods
        assert [m.method for m in ping] == ["ping"]
        assert ping[0].contract is not None and ping[0].contract.durable is False

        with pytest.raises(RemoteError) as unknown:
            await server.admin.describe("nobody")
        assert unknown.value.code == "NOT_FOUND"
        with pytest.raises(RemoteError) as no_method:
            await server.admin.describe("books", "nope")
        assert no_method.value.code == "NOT_FOUND" and "nope" in no_method.value.message


async def test_instances_with_different_contracts_are_reported(
    nats_server: NatsServerProcess, router: RouterProcess
) -> None:
    async with (
        IPCClient(nats_server.url, name="old") as old,
        IPCClient(nats_server.url, name="new") as new,
    ):
        await old.serve(book_service(1), instance_id="k1")
        await old.serve(book_service(1), instance_id="k2")
        since = router.log_size()
        await new.serve(book_service(2), instance_id="k3")
        assert await router.wait_for_output(
            "registered different contracts for book", since=since, timeout=5
        ), router.log_tail(5)
        found = await new.admin.describe("books", "book")
        book = found.methods[0]
        assert not book.consistent
        assert [v.instances for v in book.versions] == [["k1", "k2"], ["k3"]]
        v1, v2 = book.versions
        assert v1.version != v2.version
        assert v1.request is not None and "venue" not in v1.request["properties"]
        assert v2.request is not None and "venue" in v2.request["properties"]
        assert f"k3 has version {v2.version}" in router.log_since(since).decode()
        # ping is the same everywhere: one version, three instances.
        ping = (await new.admin.describe("books", "ping")).methods[0]
        assert ping.consistent and ping.versions[0].instances == ["k1", "k2", "k3"]


async def test_an_instance_without_contracts_is_listed_and_its_contracts_leave_with_it(
    nats_server: NatsServerProcess, router: RouterProcess, raw_nats: NATS
) -> None:
    codec = Codec()
    async with IPCClient(nats_server.url, name="books") as server:
        instance = await server.serve(book_service(1), instance_id="k1")
        # An older SDK: a registration without the contracts field.
        old = Registration(service="books", instance_id="k0", methods=["book"], session="s0")
        request = AdminRequest(op=AdminOp.REGISTER, args=old.model_dump(exclude={"v", "contracts"}))
        msg = await raw_nats.request(
            Subjects().control(AdminOp.REGISTER), codec.encode_envelope(request), timeout=5
        )
        assert codec.decode_envelope(msg.data, AdminReply).ok
        found = await server.admin.describe("books")
        assert found.without_contracts == ["k0"]
        assert found.methods[0].versions[0].instances == ["k1"]

        kv = await raw_nats.jetstream().key_value(Subjects().contracts_bucket)
        assert (await kv.get("books.k1")).value
        await instance.stop()

        async def gone() -> None:
            with pytest.raises(KeyNotFoundError):
                await kv.get("books.k1")

        await eventually(gone, within=5)

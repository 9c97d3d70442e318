"""Results are scoped to their caller: one caller's call_id neither reads nor pre-empts
another's record.

The attacker is ``svc_x``, a legitimate service that may call ``service_b``; the victim is
``svc_a``, another caller of ``service_b``. A durable call's subject ends with the caller's
name, which NATS lets each identity publish as itself only; the router forwards that token
as the call's caller, and the instance keys its record by it. Services may not ask for
the results bucket's stream info, which would list every key.

One stack serves every case (module scope); each case uses call_ids of its own.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import nats.errors
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS

from ipc_client_sdk import IPCClient, PermissionDeniedError
from ipc_client_sdk.protocol import Subjects
from ipc_testing import until
from ipc_testing.secured import SecuredStack
from ipc_testing.workload import CountingService, WorkRequest, WorkResult

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

S = Subjects("ipc")
VICTIM_AMOUNT = Decimal("100.25")
ATTACKER_AMOUNT = Decimal("999999.00")


@dataclass(eq=False)
class Deployment:
    stack: SecuredStack
    victim: IPCClient
    attacker: IPCClient
    service: CountingService
    x: NATS
    """The attacker's raw connection."""
    violations: list[str] = field(default_factory=list)
    """The permissions violations NATS reported to ``x``."""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def deployment(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Deployment]:
    stack = SecuredStack.create(tmp_path_factory.mktemp("results-scope"))
    await stack.start()
    try:
        async with (
            stack.client("service_b") as server,
            stack.client("svc_a") as victim,
            stack.client("svc_x") as attacker,
        ):
            service = CountingService()
            await server.serve(service.service, instance_id="b1", resources=["acc_XYZ"])
            raw = await stack.raw("svc_x")
            try:
                yield Deployment(stack, victim, attacker, service, raw.nc, raw.violations)
            finally:
                await raw.nc.close()
    finally:
        await stack.stop()


async def _call(client: IPCClient, call_id: str, amount: Decimal) -> WorkResult:
    work = WorkRequest(account="acc_XYZ", amount=amount, placed_at=datetime.now(UTC))
    result: WorkResult = await client.call(
        "service_b.do_work",
        work,
        resource_id="acc_XYZ",
        returns=WorkResult,
        call_id=call_id,
        timeout=5,
    )
    return result


async def test_another_callers_call_id_runs_anew_and_never_returns_their_result(
    deployment: Deployment,
) -> None:
    d = deployment
    mine = await _call(d.victim, "ord-1001", VICTIM_AMOUNT)
    assert mine.amount == VICTIM_AMOUNT
    theirs = await _call(d.attacker, "ord-1001", ATTACKER_AMOUNT)
    assert theirs.amount == ATTACKER_AMOUNT  # its own call, run for it
    assert d.service.runs["ord-1001"] == 2
    # svc_a's retry is still answered from svc_a's own record, not run again.
    again = await _call(d.victim, "ord-1001", VICTIM_AMOUNT)
    assert again.amount == VICTIM_AMOUNT and d.service.runs["ord-1001"] == 2


async def test_a_call_id_sent_first_by_another_caller_does_not_preempt(
    deployment: Deployment,
) -> None:
    d = deployment
    forged = await _call(d.attacker, "ord-1002", ATTACKER_AMOUNT)
    assert forged.amount == ATTACKER_AMOUNT
    victim = await _call(d.victim, "ord-1002", VICTIM_AMOUNT)
    assert victim.amount == VICTIM_AMOUNT  # svc_a's order ran, with svc_a's payload
    assert d.service.runs["ord-1002"] == 2


async def test_a_call_published_as_another_caller_is_refused(deployment: Deployment) -> None:
    """svc_x's client naming itself svc_a publishes on ``ipc.call.service_b.do_work.svc_a``:
    NATS refuses it, and nothing runs."""
    d = deployment
    async with d.stack.client("svc_x", name="svc_a") as impostor:
        with pytest.raises(PermissionDeniedError) as refused:
            await _call(impostor, "ord-1003", ATTACKER_AMOUNT)
    assert refused.value.subject == S.call("service_b", "do_work", "svc_a")
    assert d.service.runs["ord-1003"] == 0


async def test_the_results_buckets_keys_cannot_be_listed(deployment: Deployment) -> None:
    """Stream info with a subjects filter lists every key of a bucket: a service may not
    ask for it (the router may)."""
    d = deployment
    await _call(d.victim, "ord-1004", VICTIM_AMOUNT)
    api = f"$JS.API.STREAM.INFO.KV_{S.results_bucket}"
    ask = json.dumps({"subjects_filter": ">"}).encode()
    with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
        await d.x.request(api, ask, timeout=1)
    await until(lambda: any(api.lower() in v.lower() for v in d.violations), within=5)
    async with d.stack.client("router", name="inspector") as inspector:
        answer = await inspector._link.nats.request(api, ask, timeout=5)  # noqa: SLF001
    subjects = json.loads(answer.data)["state"]["subjects"]
    assert f"$KV.{S.results_bucket}.service_b.do_work.svc_a.ord-1004" in subjects

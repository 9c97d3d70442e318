"""``ipc describe [SERVICE [METHOD]]``: the method contracts the instances registered.

Per method: its durability and summary, each contract version with the instances that
registered it (several versions: the service is half upgraded), and the request and
response models field by field. ``--json`` prints the full JSON Schemas.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from ipc_cli._schema import fields, type_name
from ipc_cli.main import _json_option, _settings, app

if TYPE_CHECKING:
    from ipc_client_sdk import ContractVersion, MethodDescription, ServiceDescription


@app.command("describe")
def describe(
    ctx: typer.Context,
    service: str | None = typer.Argument(None, help="The service (default: every service)."),
    method: str | None = typer.Argument(None, help="Only this method."),
    as_json: bool = _json_option(),
) -> None:
    """Show the methods' contracts: request and response schemas, durability, summary, and
    which instances registered which version."""
    settings = _settings(ctx, as_json)
    from ipc_cli._ops import print_json, run  # noqa: PLC0415  # see ipc_cli._ops

    if service is None:
        found = run(settings, lambda client, left: client.admin.describe_all(timeout=left))
    else:
        name = service
        one = run(settings, lambda client, left: client.admin.describe(name, method, timeout=left))
        found = [one]
    if settings.json:
        print_json(found if service is None else found[0])
        return
    typer.echo("\n\n".join(_service_text(s) for s in found) or "no service is registered")


def _service_text(found: ServiceDescription) -> str:
    lines = [f"service {found.service}"]
    if found.without_contracts:
        lines.append(
            "  registered without contracts (an older SDK): " + ", ".join(found.without_contracts)
        )
    for method in found.methods:
        lines.extend(_method_lines(found.service, method))
    return "\n".join(lines)


def _method_lines(service: str, method: MethodDescription) -> list[str]:
    head = f"\n  {service}.{method.method}"
    contract = method.contract
    if contract is None:
        return [head, "    no contract registered"]
    lines = [f"{head}  ({'durable' if contract.durable else 'direct'})"]
    if contract.summary:
        lines.append(f"    {contract.summary}")
    if not method.consistent:
        lines.append(
            f"    WARNING: its instances registered {len(method.versions)} different contracts"
        )
    for version in method.versions:
        lines.extend(_version_lines(version, labelled=not method.consistent))
    return lines


def _version_lines(version: ContractVersion, *, labelled: bool) -> list[str]:
    indent = "      " if labelled else "    "
    lines = [f"    version {version.version} on {', '.join(version.instances)}"]
    if labelled:
        kind = "durable" if version.durable else "direct"
        lines[0] += f" ({kind})"
    if version.truncated:
        lines.append(f"{indent}schemas too large to register ({version.truncated} bytes)")
        return lines
    for label, schema in (("request", version.request), ("response", version.response)):
        lines.append(f"{indent}{label}: {_title(schema)}")
        for name, kind, required in fields(schema):
            lines.append(f"{indent}  {name}: {kind}{'' if required else ' (optional)'}")
    return lines


def _title(schema: object) -> str:
    if schema is None:
        return "not described"
    if not isinstance(schema, dict) or not schema:
        return "any value"
    return type_name(schema)

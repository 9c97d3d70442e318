"""``ipc stats [SERVICE]``: per-method call rates, error rates and latency percentiles
from the leading router's counters (the numbers its ``/metrics`` shows).

Per method: calls and errors since the router started, the average rate over the time it
has led, the rate and error rate over its last 10 s window, and p50/p90/p99 of the routed
time, estimated from the latency histogram. ``_other._other`` counts calls to names no
registered instance serves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from ipc_cli.main import _json_option, _settings, app

if TYPE_CHECKING:
    from ipc_client_sdk.protocol import CallStats, MethodStats, RouterStats


@app.command("stats")
def stats(
    ctx: typer.Context,
    service: str | None = typer.Argument(None, help="Only this service (default: every one)."),
    as_json: bool = _json_option(),
) -> None:
    """Show call rates, error rates and latency percentiles per method, from the leading
    router's counters."""
    settings = _settings(ctx, as_json)
    from ipc_cli._ops import print_json, run, table  # noqa: PLC0415  # see ipc_cli._ops

    name = service
    found = run(settings, lambda client, left: client.admin.stats(name, timeout=left))
    if settings.json:
        print_json(found)
        return
    if not found.methods:
        where = f" for service {service}" if service else ""
        typer.echo(f"no calls counted{where} by router {found.router_id} yet")
        return
    table(_title(found), COLUMNS, [_row(m) for m in found.methods])


COLUMNS = [
    "method",
    "calls",
    "errors",
    "calls/s",
    "calls/s (window)",
    "errors % (window)",
    "p50 ms",
    "p90 ms",
    "p99 ms",
]


def _title(found: RouterStats) -> str:
    window = f"last {found.window_s:.0f} s window" if found.window_s else "no full window yet"
    return f"calls routed by {found.router_id} (leading for {_duration(found.led_s)}; {window})"


def _row(m: MethodStats) -> list[str]:
    total, window = m.total, m.window
    return [
        f"{m.service}.{m.method}",
        str(total.calls),
        f"{total.errors} ({_percent(total)})",
        f"{total.rate:.2f}",
        f"{window.rate:.2f}" if window else "-",
        _percent(window) if window else "-",
        _ms(total.p50_s),
        _ms(total.p90_s),
        _ms(total.p99_s),
    ]


def _percent(figures: CallStats) -> str:
    return "-" if figures.error_rate is None else f"{figures.error_rate * 100:.1f}%"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _duration(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    if hours:
        return f"{hours}h{m:02d}m"
    return f"{m}m{s:02d}s" if m else f"{s}s"

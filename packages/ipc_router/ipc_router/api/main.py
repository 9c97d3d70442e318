"""``ipc-router``: the router's entry point. Runs until SIGINT or SIGTERM, then drains."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence

from ipc_router.api.app import Router, RouterStartError
from ipc_router.api.config import RouterConfig, parse_config
from ipc_router.infrastructure.logs import configure_logging

_log = logging.getLogger("ipc_router")


async def run(config: RouterConfig) -> int:
    """Run a router until SIGINT/SIGTERM; return the process exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with Router(config) as router:
            stopped = asyncio.create_task(stop.wait())
            lost = asyncio.create_task(router.lost.wait())
            await asyncio.wait({stopped, lost}, return_when=asyncio.FIRST_COMPLETED)
            for task in (stopped, lost):
                task.cancel()
            if router.lost.is_set():
                # nats-py does not reconnect from some server errors; a supervisor restarts
                # us, and the lease passes to a standby router meanwhile.
                _log.error("router %s exits: NATS connection lost for good", config.router_id)
                return 1
            _log.info("shutting down: draining")
    except RouterStartError as e:
        _log.error("router failed to start: %s", e)
        return e.exit_code
    _log.info("router %s stopped", config.router_id)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of ``ipc-router``."""
    config = parse_config(argv)
    configure_logging(config.log_level, config.log_format)
    for warning in config.warnings:
        _log.warning("%s", warning)
    return asyncio.run(run(config))

"""``AsyncService``: ``async with`` for anything that starts and stops."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class AsyncService:
    """Base for owners of processes, connections or tasks: ``async with x:`` starts ``x``
    and stops it on the way out, whatever happened inside."""

    async def start(self) -> None:
        """Bring the thing up."""
        raise NotImplementedError

    async def stop(self) -> object:
        """Bring it down; implementations make this safe to call twice."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()  # a half-started service must not leave processes behind
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

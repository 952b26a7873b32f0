"""Stopping the gateway's background loops (metrics scraper, health checker, KV-event
subscriber): each owns a list of tasks and one HTTP client session."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp


async def stop_tasks(tasks: list[asyncio.Task[Any]], session: aiohttp.ClientSession | None) -> None:
    """Cancel every task, wait until each has ended, empty the list, close the session."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    tasks.clear()
    if session is not None:
        await session.close()

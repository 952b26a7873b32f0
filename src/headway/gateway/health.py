"""Active health checks: per endpoint of every pool with `health_check.enabled`, a
`GET {endpoint}{path}` each `interval_s` (timeout `timeout_s`); the outcomes feed
the outlier detector's ejection state (outlier.py). Started with the app, stopped
(tasks cancelled, session closed) at its cleanup. An endpoint listed by several
pools is checked once, with the first such pool's settings."""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from headway.gateway.background import stop_tasks
from headway.gateway.config import GatewayConfig, HealthCheckConfig
from headway.gateway.outlier import OutlierDetector

log = logging.getLogger(__name__)


class HealthChecker:
    def __init__(self, config: GatewayConfig, outliers: OutlierDetector) -> None:
        self._outliers = outliers
        self._checks: dict[str, HealthCheckConfig] = {}
        for pool in config.pools:
            if pool.health_check.enabled:
                for url in pool.endpoints:
                    self._checks.setdefault(url, pool.health_check)
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    @property
    def num_endpoints(self) -> int:
        return len(self._checks)

    def start(self) -> None:
        if not self._checks or self._tasks:
            return
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), skip_auto_headers=("User-Agent",)
        )
        for url, cfg in self._checks.items():
            self._tasks.append(asyncio.create_task(self._loop(url, cfg)))

    async def stop(self) -> None:
        await stop_tasks(self._tasks, self._session)
        self._session = None

    async def _loop(self, url: str, cfg: HealthCheckConfig) -> None:
        while True:
            if await self.check(url, cfg):
                self._outliers.check_passed(url)
            else:
                self._outliers.check_failed(url, cfg.failure_threshold)
            await asyncio.sleep(cfg.interval_s)

    async def check(self, url: str, cfg: HealthCheckConfig) -> bool:
        assert self._session is not None
        try:
            async with asyncio.timeout(cfg.timeout_s):
                async with self._session.get(url + cfg.path) as resp:
                    await resp.read()
                    return 200 <= resp.status < 300
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.debug("health check of %s failed: %r", url, exc)
            return False

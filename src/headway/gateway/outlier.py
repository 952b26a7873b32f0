"""Failure isolation state: passive outlier detection (ejection with exponential
back-off and half-open probes) per endpoint, and the retry budget per pool.

Outlier state machine, per endpoint URL (config from the first pool listing it):
* active: `consecutive_failures` failed attempts in a row eject it until
  `now + min(base_ejection_s * 2**(n-1), max_ejection_s)`, n = ejections in a row.
* ejected, back-off running: not offered to routing (`is_ejected=True`).
* half-open (back-off over): offered again; the first request routed to it is the
  probe and, while it runs, the endpoint is not offered to others. The probe's
  success takes it back (all counts reset); its failure ejects it again with the
  next back-off; a probe that ends neither way (client gone, 4xx is a success)
  leaves it half-open for the next request.
Outcomes of attempts that started before an ejection and end during its back-off
are ignored (stale). Active health checks (health.py) feed the same state:
`failure_threshold` failed checks in a row eject an active endpoint; once the
back-off is over (and no probe runs) a passing check takes it back and a failing
one ejects it again with the next back-off. Every routed attempt ends in exactly one of `success`,
`failure` or `neutral`.
"""

from __future__ import annotations

import collections
import contextlib
import time
from dataclasses import dataclass

from headway.gateway.config import GatewayConfig, OutlierConfig, RetryConfig
from headway.gateway.metrics import GatewayMetrics


@dataclass
class _EndpointState:
    config: OutlierConfig
    consecutive_failures: int = 0
    ejections: int = 0  # ejections in a row (back-off exponent)
    is_ejected: bool = False
    ejected_until: float = 0.0
    is_probing: bool = False
    check_failures: int = 0  # active health checks failed in a row


class OutlierDetector:
    def __init__(self, config: GatewayConfig, metrics: GatewayMetrics) -> None:
        self._metrics = metrics
        self._states: dict[str, _EndpointState] = {}
        for pool in config.pools:
            for url in pool.endpoints:
                if url not in self._states:
                    self._states[url] = _EndpointState(pool.outlier)
                    metrics.ejected.labels(url).set(0)

    def reconfigure(self, config: GatewayConfig) -> None:
        """A reload: endpoints still listed keep their state (with their first pool's
        new settings), new ones start active, removed ones are forgotten."""
        listed: set[str] = set()
        for pool in config.pools:
            for url in pool.endpoints:
                if url in listed:
                    continue
                listed.add(url)
                st = self._states.get(url)
                if st is None:
                    self._states[url] = _EndpointState(pool.outlier)
                    self._metrics.ejected.labels(url).set(0)
                else:
                    st.config = pool.outlier
        for url in [u for u in self._states if u not in listed]:
            del self._states[url]
            with contextlib.suppress(KeyError):
                self._metrics.ejected.remove(url)

    def is_blocked(self, url: str, now: float | None = None) -> bool:
        """True while the endpoint must not get new requests: in its back-off, or
        half-open with its probe running."""
        st = self._states.get(url)
        if st is None or not st.is_ejected:
            return False
        now = time.monotonic() if now is None else now
        return now < st.ejected_until or st.is_probing

    def is_ejected(self, url: str) -> bool:
        st = self._states.get(url)
        return st is not None and st.is_ejected

    def routed(self, url: str) -> None:
        """A request was routed to `url`: if it is half-open, this one is the probe."""
        st = self._states.get(url)
        if (
            st is not None
            and st.is_ejected
            and not st.is_probing
            and time.monotonic() >= st.ejected_until
        ):
            st.is_probing = True

    def success(self, url: str) -> None:
        st = self._states.get(url)
        if st is None:
            return
        if st.is_ejected:
            if not st.is_probing and time.monotonic() < st.ejected_until:
                return  # stale: started before the ejection
            st.is_ejected = False
            st.is_probing = False
            st.ejections = 0
            self._metrics.ejected.labels(url).set(0)
        st.consecutive_failures = 0

    def failure(self, url: str) -> None:
        st = self._states.get(url)
        if st is None:
            return
        now = time.monotonic()
        if st.is_ejected:
            if st.is_probing or now >= st.ejected_until:
                self._eject(url, st, now)  # the probe failed: next back-off
            return
        st.consecutive_failures += 1
        if st.consecutive_failures >= st.config.consecutive_failures:
            self._eject(url, st, now)

    def neutral(self, url: str) -> None:
        """The attempt ended without telling anything (client gone): a probe is
        given back, the endpoint stays half-open."""
        st = self._states.get(url)
        if st is not None:
            st.is_probing = False

    def check_passed(self, url: str) -> None:
        st = self._states.get(url)
        if st is None:
            return
        st.check_failures = 0
        if st.is_ejected and not st.is_probing and time.monotonic() >= st.ejected_until:
            st.is_ejected = False
            st.ejections = 0
            st.consecutive_failures = 0
            self._metrics.ejected.labels(url).set(0)

    def check_failed(self, url: str, threshold: int) -> None:
        st = self._states.get(url)
        if st is None:
            return
        st.check_failures += 1
        now = time.monotonic()
        if st.is_ejected:
            if not st.is_probing and now >= st.ejected_until:
                self._eject(url, st, now)
        elif st.check_failures >= threshold:
            self._eject(url, st, now)

    def _eject(self, url: str, st: _EndpointState, now: float) -> None:
        st.ejections += 1
        cfg = st.config
        backoff = min(cfg.base_ejection_s * 2 ** (st.ejections - 1), cfg.max_ejection_s)
        st.is_ejected = True
        st.is_probing = False
        st.ejected_until = now + backoff
        st.consecutive_failures = 0
        self._metrics.ejections.labels(url).inc()
        self._metrics.ejected.labels(url).set(1)


class RetryBudget:
    """A pool's sliding-window count of requests and retries (whole-second buckets
    over the last `budget_window_s`); a retry is allowed while the window's retries
    are below `max(budget_min_retries, budget_ratio * requests)`."""

    def __init__(self, config: RetryConfig) -> None:
        self._config = config
        self._window = max(1, round(config.budget_window_s))
        # (second, requests, retries), oldest first
        self._buckets: collections.deque[list[int]] = collections.deque()
        self._requests = 0
        self._retries = 0

    @property
    def config(self) -> RetryConfig:
        return self._config

    def _bucket(self) -> list[int]:
        now = int(time.monotonic())
        while self._buckets and self._buckets[0][0] <= now - self._window:
            _, req, ret = self._buckets.popleft()
            self._requests -= req
            self._retries -= ret
        if not self._buckets or self._buckets[-1][0] != now:
            self._buckets.append([now, 0, 0])
        return self._buckets[-1]

    def request(self) -> None:
        self._bucket()[1] += 1
        self._requests += 1

    def try_retry(self) -> bool:
        """Take one retry from the budget; False when it is spent."""
        bucket = self._bucket()
        cfg = self._config
        allowed = max(cfg.budget_min_retries, cfg.budget_ratio * self._requests)
        if self._retries + 1 > allowed:
            return False
        bucket[2] += 1
        self._retries += 1
        return True

"""The gateway's own in-flight accounting per endpoint.

Invariant: for every endpoint, `num_requests` and `num_tokens` are the sums over the
leases handed out by `acquire` and not yet released; a lease releases at most once,
so counts never go negative and a cancelled request cannot leak load.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class EndpointLoad:
    num_requests: int = 0
    num_tokens: int = 0


@dataclass(slots=True)
class Lease:
    endpoint: str
    num_tokens: int
    _tracker: InFlightTracker = field(repr=False)
    is_released: bool = False

    def release(self) -> None:
        if not self.is_released:
            self.is_released = True
            self._tracker._release(self)


class InFlightTracker:
    def __init__(self) -> None:
        self._loads: dict[str, EndpointLoad] = {}

    def load(self, endpoint: str) -> EndpointLoad:
        return self._loads.get(endpoint) or EndpointLoad()

    def acquire(self, endpoint: str, num_tokens: int) -> Lease:
        load = self._loads.get(endpoint)
        if load is None:
            load = self._loads[endpoint] = EndpointLoad()
        load.num_requests += 1
        load.num_tokens += num_tokens
        return Lease(endpoint, num_tokens, self)

    def _release(self, lease: Lease) -> None:
        load = self._loads[lease.endpoint]
        load.num_requests -= 1
        load.num_tokens -= lease.num_tokens

    @property
    def num_in_flight(self) -> int:
        return sum(load.num_requests for load in self._loads.values())

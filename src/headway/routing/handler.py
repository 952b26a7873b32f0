"""Profile handlers: which profiles run for a request, and what comes back.

`SingleProfileHandler` runs one profile. `PrefillDecodeHandler` runs a prefill
profile and then a decode profile over the same endpoints (each profile's filters
choose its side) and returns both picks; it always runs both, so a caller whose
prefill pick came back empty can still serve the request aggregated on the decode
endpoint. The caller commits a result by calling `observe` (ideally before its next
`decide`, so that e.g. round-robin advances between consecutive requests).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import numpy as np

from headway.routing.context import RequestContext
from headway.routing.decision import Decision
from headway.routing.endpoint import EndpointSnapshot
from headway.routing.profile import Profile, Timer


class HandlerMode(StrEnum):
    SINGLE = "single"
    PREFILL_DECODE = "prefill-decode"


@dataclass(frozen=True)
class RoutingResult:
    """`decision` picks the endpoint that serves the request (the decode side under
    prefill/decode disaggregation); `prefill` is set only under disaggregation."""

    decision: Decision
    prefill: Decision | None = None

    @property
    def is_routed(self) -> bool:
        return self.decision.is_routed and (self.prefill is None or self.prefill.is_routed)


class ProfileHandler(Protocol):
    @property
    def mode(self) -> HandlerMode: ...

    @property
    def profiles(self) -> tuple[Profile, ...]: ...

    def decide(
        self,
        ctx: RequestContext,
        endpoints: Iterable[EndpointSnapshot],
        *,
        now: float,
        rng: np.random.Generator,
        timer: Timer,
    ) -> RoutingResult: ...

    def observe(self, ctx: RequestContext, result: RoutingResult) -> None: ...


@dataclass(frozen=True)
class SingleProfileHandler:
    profile: Profile

    @property
    def mode(self) -> HandlerMode:
        return HandlerMode.SINGLE

    @property
    def profiles(self) -> tuple[Profile, ...]:
        return (self.profile,)

    def decide(
        self,
        ctx: RequestContext,
        endpoints: Iterable[EndpointSnapshot],
        *,
        now: float,
        rng: np.random.Generator,
        timer: Timer,
    ) -> RoutingResult:
        return RoutingResult(self.profile.run(ctx, endpoints, now=now, rng=rng, timer=timer))

    def observe(self, ctx: RequestContext, result: RoutingResult) -> None:
        self.profile.observe(ctx, result.decision)


@dataclass(frozen=True)
class PrefillDecodeHandler:
    prefill: Profile
    decode: Profile

    def __post_init__(self) -> None:
        if self.prefill.name == self.decode.name:
            raise ValueError("decode: must be a different profile from prefill")

    @property
    def mode(self) -> HandlerMode:
        return HandlerMode.PREFILL_DECODE

    @property
    def profiles(self) -> tuple[Profile, ...]:
        return (self.prefill, self.decode)

    def decide(
        self,
        ctx: RequestContext,
        endpoints: Iterable[EndpointSnapshot],
        *,
        now: float,
        rng: np.random.Generator,
        timer: Timer,
    ) -> RoutingResult:
        offered = tuple(endpoints)  # iterated twice
        prefill = self.prefill.run(ctx, offered, now=now, rng=rng, timer=timer)
        decode = self.decode.run(ctx, offered, now=now, rng=rng, timer=timer)
        return RoutingResult(decision=decode, prefill=prefill)

    def observe(self, ctx: RequestContext, result: RoutingResult) -> None:
        if result.prefill is not None:
            self.prefill.observe(ctx, result.prefill)
        self.decode.observe(ctx, result.decision)

"""What one profile run decided, and why.

Invariant: `outcome` is ROUTED exactly when `endpoint_id` is set, and NO_ENDPOINT
exactly when `reason` is set. `top_scores` is sorted best first (ties by id).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class PluginKind(StrEnum):
    """The pipeline stage a plugin runs in."""

    FILTER = "filter"
    SCORER = "scorer"
    PICKER = "picker"


class Outcome(StrEnum):
    ROUTED = "routed"
    NO_ENDPOINT = "no-endpoint"


class NoEndpointReason(StrEnum):
    NO_ENDPOINTS = "no-endpoints"  # the caller offered none
    ALL_FILTERED = "all-filtered"  # a filter removed the last candidate (`eliminated_by`)


@dataclass(frozen=True)
class PluginTiming:
    """Time one plugin call took, measured by the framework's injected timer."""

    plugin: str  # the plugin's name in its profile
    kind: PluginKind
    elapsed_s: float


@dataclass(frozen=True)
class EndpointScore:
    """A candidate's combined score and each scorer's contribution (before weighting)."""

    endpoint_id: str
    score: float
    by_scorer: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Decision:
    """The result of running one profile for one request."""

    profile: str
    outcome: Outcome
    decided_at: float  # the caller's `now`
    num_endpoints: int  # offered to the profile
    num_candidates: int  # left after the filters
    endpoint_id: str | None = None  # set when ROUTED
    reason: NoEndpointReason | None = None  # set when NO_ENDPOINT
    eliminated_by: str | None = None  # the filter that removed the last candidate
    num_tied: int = 0  # candidates sharing the best score (> 1: the rng chose)
    top_scores: tuple[EndpointScore, ...] = ()
    timings: tuple[PluginTiming, ...] = ()

    def __post_init__(self) -> None:
        if (self.outcome is Outcome.ROUTED) != (self.endpoint_id is not None):
            raise ValueError("endpoint_id: must be set exactly when outcome is routed")
        if (self.outcome is Outcome.NO_ENDPOINT) != (self.reason is not None):
            raise ValueError("reason: must be set exactly when outcome is no-endpoint")

    @property
    def is_routed(self) -> bool:
        return self.outcome is Outcome.ROUTED

    @property
    def total_plugin_s(self) -> float:
        return sum(t.elapsed_s for t in self.timings)

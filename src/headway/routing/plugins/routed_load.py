"""`routed-load` scorer: prefers endpoints this profile has routed less work to lately.

The in-flight load scorers (`least-request`, `token-load`) see only what is on an
endpoint now; near idle they tie and the picker's rng decides. Where cache affinity
decides nothing (a prompt whose prefix is cached nowhere: a tenant's first request,
or one after eviction) that rng choice places work that stays for the rest of the
run, since every later request of that prefix follows it. This term remembers.

Per endpoint e, w(e) is an exponentially decayed sum of the work routed there:

    w(e) <- w(e) * 2^(-1 / half_life_decisions)    on every routed decision (any e)
    w(chosen) += u(request)

with u = 1 (`unit: requests`, the default), u = prompt tokens (estimate) + the
request's max output tokens (`unit: tokens`, gross), or u = the prompt tokens the
chosen endpoint does not hold + the max output tokens (`unit: new-tokens`: the KV
blocks the request writes into that engine's prefix cache, so w is the cache's recent
turnover: what pushes the least recently used prefixes out of it; the share held is
`precise-prefix`'s, precise from KV events and approximate where those are stale).
Placing a cold prefix where turnover is least keeps it cached longest, and leaves
each engine's residence time (capacity / turnover) alike: a hot tenant's sessions
grow their histories on its engine, so a replica serving one counts as busier for
new tenants even while its in-flight load is light. The decay is clock-free: one step per
decision this profile commits, so the memory spans the last ~`half_life_decisions`
decisions whatever the request rate (the default, 2048, spans several visits of
every tenant in the routing_quality scenario: 150 tenants x 3 calls per visit).

With `cold_below_match` set, the term scores only prompts that no candidate holds
that share of (every candidate scores 1.0 for the others), so it places cold prefixes
and nothing else. A warm prompt whose holders are overloaded (the affinity filter let
every candidate through) is left to the prefix and load terms: measured in
`routing_quality`'s cluster simulation, a turnover term that scored those too moved
them off their holders (hit rate 0.983 -> 0.965 on one seed of six).

score(e) = 1 - w(e) / max(w over candidates) (`normalize: relative`, the default:
`token-load`'s rule); all equal (including no history) scores 1.0 each. With
`normalize: range`, score(e) = (max w - w(e)) / (max w - min w): full pull however
small the differences (noisier). A candidate with no history (new, or dropped: see
below) counts as the least w among the candidates that have one, and its first
routed request starts it at the least w of every endpoint known, plus that request:
a joining endpoint ties with the least-loaded one, so it is neither flooded with every
new prefix (as from 0) nor starved (as from the mean, above the least-loaded one). At
start-up every endpoint but the first joins that way, one request above it; the bias
decays with the rest.

Invariants (state changes only in `observe`): stored values are w(e) x `_scale`
(one multiplication per decision instead of decaying every entry); when `_scale`
passes 2^32 every entry is divided by it, and entries below 2^-20 of the largest are
dropped then. So state is bounded: an endpoint that left (routed nothing for ~20
half-lives) is forgotten, and if it returns it counts as new.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from headway.routing.config import ConfigError
from headway.routing.context import RequestContext
from headway.routing.decision import Decision, PluginKind
from headway.routing.load import inverse_relative
from headway.routing.plugin import Endpoints, PluginSpec
from headway.routing.prefix.approx_index import ApproxPrefixIndex
from headway.routing.prefix.kv_index import KvBlockIndex
from headway.routing.prefix.matching import prefix_fractions
from headway.routing.shared import RoutingResources
from headway.routing.state import RequestScratch

_UNITS = ("requests", "tokens", "new-tokens")
_NORMALIZE = ("relative", "range")
_RENORMALIZE_AT = 2.0**32  # rescale stored values once the growth factor passes this
_FORGET_BELOW = 2.0**-20  # ... and drop entries this small relative to the largest


@dataclass(frozen=True)
class RoutedLoadParams:
    half_life_decisions: int = 2048  # routed decisions after which past work counts half
    unit: str = "requests"  # requests: 1 a call; tokens: prompt + max output; new-tokens:
    # the prompt tokens the chosen endpoint does not hold + max output (cache turnover)
    normalize: str = "relative"  # relative: 1 - w / max w; range: (max w - w) / (max - min)
    # Score only prompts no candidate holds this share of (cached nowhere to speak of);
    # any other scores 1.0 everywhere. None: every prompt.
    cold_below_match: float | None = None

    def __post_init__(self) -> None:
        if self.half_life_decisions < 1:
            raise ConfigError("half_life_decisions", "must be >= 1")
        if self.cold_below_match is not None and not 0.0 < self.cold_below_match <= 1.0:
            raise ConfigError("cold_below_match", "must be in (0, 1] or null")
        if self.unit not in _UNITS:
            raise ConfigError("unit", f"must be one of {list(_UNITS)}, got {self.unit!r}")
        if self.normalize not in _NORMALIZE:
            raise ConfigError(
                "normalize", f"must be one of {list(_NORMALIZE)}, got {self.normalize!r}"
            )


class RoutedLoadScorer:
    TYPE: ClassVar[str] = "routed-load"

    def __init__(self, params: RoutedLoadParams, resources: RoutingResources | None = None) -> None:
        self.params = params
        resources = resources or RoutingResources()
        self._kv_index: KvBlockIndex | None = resources.kv_index
        self._approx = resources.approx_index or ApproxPrefixIndex()
        # The held shares `score` computed for the request being decided (`observe`
        # follows its decision at once; it must not re-match: other plugins' observe
        # may already have recorded this very prompt in the approximate index).
        self._held: tuple[RequestContext, Mapping[str, float]] | None = None
        self._growth = 2.0 ** (1.0 / params.half_life_decisions)
        self._scale = 1.0  # stored value / w
        self._stored: dict[str, float] = {}

    @property
    def num_endpoints_tracked(self) -> int:
        """Endpoints with history (bounded: see the module docstring)."""
        return len(self._stored)

    def routed_load(self, endpoint_id: str) -> float | None:
        """w(endpoint_id) now; None when it has no history."""
        stored = self._stored.get(endpoint_id)
        return None if stored is None else stored / self._scale

    def score(
        self, ctx: RequestContext, endpoints: Endpoints, scratch: RequestScratch
    ) -> Mapping[str, float]:
        cold_below = self.params.cold_below_match
        if self.params.unit == "new-tokens" or cold_below is not None:
            held = self._held_shares(ctx, endpoints, scratch)
            self._held = (ctx, held)
            if cold_below is not None and max(held.values(), default=0.0) >= cold_below:
                return dict.fromkeys((e.endpoint_id for e in endpoints), 1.0)
        known = [self._stored[e.endpoint_id] for e in endpoints if e.endpoint_id in self._stored]
        fill = min(known, default=0.0)
        values = {e.endpoint_id: self._stored.get(e.endpoint_id, fill) for e in endpoints}
        if self.params.normalize == "relative" or not values:
            return inverse_relative(values)
        most, least = max(values.values()), min(values.values())
        if most == least:
            return dict.fromkeys(values, 1.0)
        return {k: (most - v) / (most - least) for k, v in values.items()}

    def observe(self, ctx: RequestContext, decision: Decision) -> None:
        endpoint_id = decision.endpoint_id
        if endpoint_id is None:
            return
        if self.params.unit == "requests":
            work = 1.0
        else:
            prompt = float(ctx.num_prompt_tokens_est)
            if self.params.unit == "new-tokens":
                prompt *= 1.0 - self._held_share(ctx, endpoint_id)
            work = prompt + (ctx.max_output_tokens or 0)
        self._scale *= self._growth
        stored = self._stored.get(endpoint_id)
        if stored is None and self._stored:
            # New (or forgotten) endpoint: start it level with the least-loaded known one
            # (0 would flood it with every new prefix; the mean would starve it, as
            # every decision then prefers the least-loaded known endpoint).
            stored = min(self._stored.values())
        self._stored[endpoint_id] = (stored or 0.0) + work * self._scale
        if self._scale > _RENORMALIZE_AT:
            self._renormalize()

    def _held_shares(
        self, ctx: RequestContext, endpoints: Endpoints, scratch: RequestScratch
    ) -> Mapping[str, float]:
        return prefix_fractions(ctx, endpoints, scratch, self._kv_index, self._approx)

    def _held_share(self, ctx: RequestContext, endpoint_id: str) -> float:
        """The share of `ctx`'s prompt `endpoint_id` held when it was chosen: what
        `score` saw, or 0 for a request `score` did not see, the conservative reading
        (a cold prompt writes all its blocks)."""
        held, self._held = self._held, None
        if held is None or held[0] is not ctx:
            return 0.0
        return held[1].get(endpoint_id, 0.0)

    def _renormalize(self) -> None:
        top = max(self._stored.values())
        self._stored = {
            k: v / self._scale for k, v in self._stored.items() if v >= top * _FORGET_BELOW
        }
        self._scale = 1.0


SPEC = PluginSpec(
    type=RoutedLoadScorer.TYPE,
    kind=PluginKind.SCORER,
    params_type=RoutedLoadParams,
    factory=RoutedLoadScorer,
    reads=frozenset(),  # the endpoint id only
    summary="1 - decayed work this profile routed to the endpoint / the candidates' maximum",
    needs_resources=True,  # new-tokens and cold_below_match: the prefix indexes
)

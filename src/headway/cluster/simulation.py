"""A fleet of `core` engines and the `headway.routing` scheduler in virtual time.

Each replica is the engine `headway sim` serves (same `core.engine`, same sizing via
`core.engine_factory`); each routing decision is made by the handler the gateway
builds from the same config. What differs from a live run is only the clock: a step
that the cost model says takes d seconds ends exactly d seconds of virtual time after
it started, and the gateway's view of the engines lags as it would live:

* engine metrics (queue depth, running requests, KV usage) are re-read every
  `scrape_interval_s`;
* a step's KV events reach the precise prefix index `kv_event_delay_s` after the step;
* in-flight requests and tokens are the gateway's own counts, exact at decision time
  (prompt tokens + max_tokens per request, released when it finishes).

A call's front end (the HTTP server, the gateway's and the engine's parsing and
tokenization, the proxy hop: ~15 ms of wall time per request live, which the engine
model does not include) is `frontend_overhead_s` of virtual time between the client
sending it (`sent_at`, where TTFT starts) and the gateway routing it to an engine
(which takes it at once). 0 (the default) routes at the send instant. Where the front
end varies from call to call, `frontend_overhead_samples_s` gives measured values
instead: each call draws one of them, uniformly, from its own generator seeded with
`seed` (so the routing's random stream is the same with or without them).

Admission control (`ClusterConfig.admission`, off by default) is the gateway's
(gateway/admission.py), in virtual time: a call is routed only among replicas below
`max_in_flight_per_endpoint` in-flight calls; when all are at the cap it waits in the
pool's FIFO queue (new calls queue behind waiting ones, never barge), at most
`max_queue` calls and each at most `max_wait_s`; beyond either it is rejected as the
gateway rejects it, a record with error `http_429` (status 429), as `headway bench`
records a 429. A finishing call's slot goes to the head of the queue at once.

Prefill/decode disaggregation (replica groups with role `prefill` and `decode`): the
routing handler picks a decode replica and, separately, a prefill replica for each
call (as llm-d's P/D scheduler does). The prefill replica computes the prompt and one
token (max_tokens=1, its token is not the client's); the prompt's KV then crosses the
prefill replica's link, one transfer at a time: prompt tokens x the model's KV bytes
per token / `kv_link_bytes_per_s`, plus `kv_link_latency_s`. The decode replica
takes the call when its KV arrives, loads the prompt's whole blocks instead of
computing them (`EngineRequest.num_external_computed_tokens`), computes the rest and
streams every output token: TTFT = front end + prefill + transfer + the decode
replica's first step, and the queueing on each. In-flight counts: a call is on its
prefill replica until the prefill ends, and on its decode replica from routing to its
last token. Admission control is not modelled with P/D pools.

A session's stages run closed-loop, as `headway bench` runs them: a stage is sent
when the previous one has finished and its `delay_s` has passed. Calls are sent with
`ignore_eos`, so each produces exactly `max_tokens` tokens (the bench asks the same).

Decode jumps (`max_decode_jump_steps` > 1, the default): when a replica's step is
silent and the engine plans a run of plain decode steps after it
(`Engine.plan_decode_jump`: nothing waiting, nothing finishing, no KV event, no
allocation before the run's last step), the replica schedules one step-end event for
the whole run instead of one per step. The engine takes the planned steps lazily:
whatever reads it in the meantime first brings it to the instant it reads at (all
steps that started by then, as single steps would have): a scrape does, and a request
routed to it does and then cuts the run at the end of the step in progress (the
request joins the next step, as it would live). Tokens keep their own step-end times,
so the results are identical with jumps on and off (tests/cluster/
test_cluster_jumps.py compares the bench JSON byte for byte); only `num_events`
differs.

Invariants: every call sent ends in exactly one record (finished, or failed: rejected
or no endpoint; the cluster has no client aborts); in-flight counts and the admission
queue return to zero when the run drains; no replica ever holds more in-flight calls
than the admission cap; virtual time never goes backwards (events.EventQueue).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from headway.cluster.events import EventKind, EventQueue
from headway.core.block_hash import BlockHasher, BlockHashMemo, to_event_int
from headway.core.catalog import Catalog
from headway.core.engine import Engine, StepResult
from headway.core.engine_factory import EngineSpec, ResolvedEngine, resolve_engine
from headway.core.kv_events import EventBatch
from headway.core.sampler import DeterministicSampler
from headway.core.sequence import EngineRequest
from headway.core.serving_metrics import RequestRecord
from headway.core.tokenizer import ChatEncoder, Tokenizer
from headway.core.workloads import Call, Session
from headway.routing import (
    ApproxPrefixIndex,
    EndpointSnapshot,
    KvBlockIndex,
    ProfileHandler,
    RequestContext,
    RoutingResources,
    build_handler,
)
from headway.routing.context import Headers
from headway.routing.prefix.chunks import DEFAULT_CHUNK_CHARS, chunk_hashes
from headway.routing.prefix.matching import expected_cached_tokens


class ClusterConfigError(ValueError):
    """A cluster description that cannot run; the message names the field."""


class ReplicaRole(StrEnum):
    """What a replica serves: whole requests, or one side of P/D disaggregation."""

    MIXED = "mixed"
    PREFILL = "prefill"
    DECODE = "decode"


@dataclass(frozen=True)
class ReplicaGroup:
    """`count` identical replicas of one engine."""

    engine: EngineSpec
    count: int = 1
    role: ReplicaRole = ReplicaRole.MIXED

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ClusterConfigError(f"count: must be >= 1, got {self.count}")
        try:
            ReplicaRole(self.role)
        except ValueError:
            raise ClusterConfigError(
                f"role: {self.role!r} is not one of {[r.value for r in ReplicaRole]}"
            ) from None


@dataclass(frozen=True)
class AdmissionLimits:
    """The gateway's admission control for the pool (gateway config:
    `max_in_flight_per_endpoint`, `admission.max_queue`, `admission.max_wait_s`;
    the defaults are the gateway's)."""

    max_in_flight_per_endpoint: int = 256
    max_queue: int = 1024  # calls waiting at most (0: reject at once when all are full)
    max_wait_s: float = 30.0  # longest a call waits for a slot

    def __post_init__(self) -> None:
        if self.max_in_flight_per_endpoint < 1:
            raise ClusterConfigError(
                f"admission.max_in_flight_per_endpoint: must be >= 1, got "
                f"{self.max_in_flight_per_endpoint}"
            )
        if self.max_queue < 0:
            raise ClusterConfigError(f"admission.max_queue: must be >= 0, got {self.max_queue}")
        if not (math.isfinite(self.max_wait_s) and self.max_wait_s >= 0):
            raise ClusterConfigError(
                f"admission.max_wait_s: must be a finite number >= 0, got {self.max_wait_s}"
            )


@dataclass(frozen=True)
class ClusterConfig:
    """What to simulate. `routing` is the gateway's routing config for the pool
    (`{"preset": "kv-aware"}` or explicit profiles; see docs/policies.md)."""

    groups: tuple[ReplicaGroup, ...]
    routing: Mapping[str, Any] = field(default_factory=lambda: {"preset": "round-robin"})
    scrape_interval_s: float = 0.25
    kv_event_delay_s: float = 0.005
    is_kv_events_enabled: bool = True
    seed: int = 0
    # Most engine steps one step-end event may cover (1: no decode jumps). Results do
    # not depend on it; only the simulation's speed does.
    max_decode_jump_steps: int = 64
    # Virtual seconds from a call's send to its routing (see the module docstring).
    frontend_overhead_s: float = 0.0
    # Or a measured distribution of it: each call draws one value (seeded); empty: the
    # constant above. Not both.
    frontend_overhead_samples_s: tuple[float, ...] = ()
    # The gateway's in-flight caps and admission queue; None: every call is routed at
    # once, however loaded the replicas are.
    admission: AdmissionLimits | None = None
    # P/D pools: KV transfer bandwidth of each prefill replica's link, and latency.
    kv_link_bytes_per_s: float = 50e9
    kv_link_latency_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.groups:
            raise ClusterConfigError("groups: at least one replica group is needed")
        if not (math.isfinite(self.frontend_overhead_s) and self.frontend_overhead_s >= 0):
            raise ClusterConfigError(
                f"frontend_overhead_s: must be a finite number >= 0, got {self.frontend_overhead_s}"
            )
        for i, x in enumerate(self.frontend_overhead_samples_s):
            if not (math.isfinite(x) and x >= 0):
                raise ClusterConfigError(
                    f"frontend_overhead_samples_s[{i}]: must be a finite number >= 0, got {x}"
                )
        if self.frontend_overhead_samples_s and self.frontend_overhead_s:
            raise ClusterConfigError(
                "frontend_overhead_samples_s: give it or frontend_overhead_s, not both"
            )
        roles = {ReplicaRole(g.role) for g in self.groups}
        if roles != {ReplicaRole.MIXED} and roles != {ReplicaRole.PREFILL, ReplicaRole.DECODE}:
            raise ClusterConfigError(
                "groups[].role: either every group is mixed, or there are prefill and "
                f"decode groups and no mixed one; got {sorted(roles)}"
            )
        if ReplicaRole.PREFILL in roles and self.admission is not None:
            raise ClusterConfigError("admission: not modelled with prefill/decode pools")
        if not (math.isfinite(self.kv_link_bytes_per_s) and self.kv_link_bytes_per_s > 0):
            raise ClusterConfigError(
                f"kv_link_bytes_per_s: must be a finite number > 0, got {self.kv_link_bytes_per_s}"
            )
        if not (math.isfinite(self.kv_link_latency_s) and self.kv_link_latency_s >= 0):
            raise ClusterConfigError(
                f"kv_link_latency_s: must be a finite number >= 0, got {self.kv_link_latency_s}"
            )
        if self.max_decode_jump_steps < 1:
            raise ClusterConfigError(
                f"max_decode_jump_steps: must be >= 1, got {self.max_decode_jump_steps}"
            )
        if not self.scrape_interval_s > 0:
            raise ClusterConfigError(
                f"scrape_interval_s: must be > 0, got {self.scrape_interval_s}"
            )
        if not self.kv_event_delay_s >= 0:
            raise ClusterConfigError(f"kv_event_delay_s: must be >= 0, got {self.kv_event_delay_s}")
        first = self.groups[0].engine
        for i, g in enumerate(self.groups):
            # One request's block hashes must mean the same on every replica for the
            # prefix index to compare them.
            if g.engine.block_size != first.block_size:
                raise ClusterConfigError(
                    f"groups[{i}].engine.block_size: {g.engine.block_size} differs from "
                    f"groups[0]'s {first.block_size}; one block size per cluster"
                )
            if g.engine.hash_seed != first.hash_seed:
                raise ClusterConfigError(f"groups[{i}].engine.hash_seed: differs from groups[0]'s")

    @property
    def num_replicas(self) -> int:
        return sum(g.count for g in self.groups)

    @property
    def is_disaggregated(self) -> bool:
        return any(g.role == ReplicaRole.PREFILL for g in self.groups)


@dataclass
class _Replica:
    index: int
    endpoint_id: str
    engine: Engine
    resolved: ResolvedEngine
    role: ReplicaRole = ReplicaRole.MIXED
    link_free_at: float = 0.0  # P/D: when this prefill replica's KV link is next free
    is_busy: bool = False
    # The steps in flight since the last step end: their end times (one step, or a
    # decode jump's run), how many the engine has taken, and what those returned.
    step_ends: list[float] = field(default_factory=list)
    num_taken: int = 0
    results: list[StepResult] = field(default_factory=list)
    step_end_gen: int = 0  # a step-end event of an older generation was cut: skip it
    # The gateway's last scrape of this engine.
    scraped_waiting: int = 0
    scraped_running: int = 0
    scraped_kv_usage: float = 0.0
    scraped_at: float | None = None
    # The gateway's own in-flight accounting.
    num_in_flight_requests: int = 0
    num_in_flight_tokens: int = 0
    max_in_flight_requests: int = 0
    snapshot: EndpointSnapshot | None = None
    snapshot_key: tuple[float | None, int, int] | None = None


@dataclass
class _SessionState:
    session: Session
    stage_index: int = 0
    num_open_calls: int = 0


@dataclass(eq=False)
class _Waiter:
    """A call queued for an admission slot."""

    call: Call
    session: _SessionState
    sent_at: float
    is_done: bool = False


@dataclass
class _CallState:
    call: Call
    session: _SessionState
    replica: _Replica
    sent_at: float
    num_prompt_tokens: int
    reserved_tokens: int
    chunk_times: list[float] = field(default_factory=list)
    num_cached_tokens: int = 0
    # P/D: the prefill replica while the prompt is being prefilled there.
    prefill: _Replica | None = None
    prefill_reserved_tokens: int = 0
    token_ids: tuple[int, ...] = ()
    block_hashes: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class ReplicaStats:
    """One replica's totals over a run."""

    endpoint_id: str
    num_steps: int
    num_prompt_tokens: int
    num_generation_tokens: int
    num_prefix_query_tokens: int
    num_prefix_hit_tokens: int
    num_preemptions: int
    busy_s: float
    max_in_flight_requests: int = 0  # the most calls the gateway had on it at once


@dataclass(frozen=True)
class ClusterRun:
    """What a simulation produced: one record per call, and per-replica totals."""

    records: tuple[RequestRecord, ...]
    duration_s: float  # first arrival to last token
    replicas: tuple[ReplicaStats, ...]
    num_events: int
    decisions: Mapping[str, int]  # endpoint id -> calls routed there
    # Admission: calls rejected, by reason (queue_full, wait_timeout), and the most
    # calls that waited for a slot at once.
    rejections: Mapping[str, int] = field(default_factory=dict)
    max_queue_depth: int = 0
    # P/D: prompts whose KV crossed a link, and their mean time from the prefill's end
    # to the decode replica (link queueing + transfer + latency).
    num_kv_transfers: int = 0
    mean_kv_transfer_s: float = 0.0
    # Call id -> the endpoint it was routed to (P/D: its decode replica), so a caller
    # can count per-replica work over any window of `records`.
    routed_to: Mapping[str, str] = field(default_factory=dict)

    @property
    def prefix_hit_rate(self) -> float:
        query = sum(r.num_prefix_query_tokens for r in self.replicas)
        hits = sum(r.num_prefix_hit_tokens for r in self.replicas)
        return hits / query if query else 0.0


class PromptEncoder:
    """Chat messages -> prompt token ids, engine block hashes and the gateway's
    approximate chunk keys.

    The same Llama-3 template and tokenizer `headway sim` applies (through
    `core.tokenizer.ChatEncoder`, which encodes message by message with a cache and
    checks itself against whole-prompt encoding), so a prompt's tokens and block hashes
    are those the live engine would see; shared prefixes hash through a `BlockHashMemo`.

    Prompts that share their leading messages (a system prompt, earlier turns) share
    leading blocks: the last prompt seen with the same leading messages is kept, and
    the whole blocks a new prompt has in common with it (compared token by token, so
    the reuse never depends on how the template splits) reuse its digests and their
    event ints instead of looking each block up again.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        block_size: int,
        hash_seed: str | None,
        max_prefixes: int = 4096,
    ) -> None:
        # Room for every distinct message of a long run: with the default 4,096 pieces
        # a 100,000-request run evicts (and re-encodes) its hot system prompts.
        self._chat = ChatEncoder(tokenizer, max_pieces=32768)
        self._hasher = BlockHasher(block_size, hash_seed, memo=BlockHashMemo())
        self._block_size = block_size
        self._max_prefixes = max_prefixes
        # Leading messages -> the last prompt with them: tokens, digests, event ints.
        self._by_prefix: dict[
            tuple[tuple[str, str], ...],
            tuple[tuple[int, ...], tuple[bytes, ...], tuple[int, ...]],
        ] = {}

    @staticmethod
    def _messages(call: Call) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in call.messages]

    def encode(self, call: Call) -> tuple[tuple[int, ...], tuple[bytes, ...]]:
        """The prompt's token ids and the engine's block hashes of its full blocks."""
        token_ids, digests, _ = self.encode_with_ints(call)
        return token_ids, digests

    def encode_with_ints(
        self, call: Call
    ) -> tuple[tuple[int, ...], tuple[bytes, ...], tuple[int, ...]]:
        """`encode`, and the digests as the int block hashes KV events carry."""
        token_ids = tuple(self._chat.encode(self._messages(call)))
        key = tuple((m.role, m.content) for m in call.messages[:-1])
        bs = self._block_size
        digests: list[bytes] = []
        ints: tuple[int, ...] = ()
        seen = self._by_prefix.get(key)
        if seen is not None:
            old_tokens, old_digests, old_ints = seen
            # The most leading whole blocks the two prompts share (by bisection).
            lo, hi = 0, min(len(old_digests), len(token_ids) // bs)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if token_ids[: mid * bs] == old_tokens[: mid * bs]:
                    lo = mid
                else:
                    hi = mid - 1
            digests = list(old_digests[:lo])
            ints = old_ints[:lo]
        num_known = len(digests)
        self._hasher.extend(digests, token_ids[num_known * bs :], token_offset=num_known * bs)
        ints += tuple(to_event_int(h) for h in digests[num_known:])
        result = (token_ids, tuple(digests), ints)
        if key:
            if seen is None and len(self._by_prefix) >= self._max_prefixes:
                del self._by_prefix[next(iter(self._by_prefix))]
            self._by_prefix[key] = result
        return result

    def chunk_hashes(self, call: Call) -> tuple[int, ...]:
        """The gateway's approximate prefix keys of the rendered prompt."""
        return chunk_hashes(self._chat.render(self._messages(call)), DEFAULT_CHUNK_CHARS)


class ClusterSimulation:
    """Run sessions through a routed fleet of engines in virtual time."""

    def __init__(
        self,
        config: ClusterConfig,
        catalog: Catalog,
        tokenizer: Tokenizer,
        vocab: Sequence[int],
        model_name: str | None = None,
    ) -> None:
        self.config = config
        self._replicas: list[_Replica] = []
        for gi, group in enumerate(config.groups):
            try:
                resolved = resolve_engine(group.engine, catalog)
            except ValueError as exc:
                raise ClusterConfigError(f"groups[{gi}].engine.{exc}") from None
            for _ in range(group.count):
                i = len(self._replicas)
                sampler = DeterministicSampler(
                    tuple(vocab), tokenizer.eos_token_id, seed=config.seed + i
                )
                engine = Engine(resolved.config, resolved.cost_model.step_cost, sampler)
                role = ReplicaRole(group.role)
                name = "replica" if role == ReplicaRole.MIXED else role.value
                self._replicas.append(_Replica(i, f"{name}-{i:03d}", engine, resolved, role))
        self._by_id = {r.endpoint_id: r for r in self._replicas}
        first = config.groups[0].engine
        self.model_name = model_name or first.model
        self._models = frozenset({self.model_name})
        self._encoder = PromptEncoder(tokenizer, first.block_size, first.hash_seed)
        self._kv_index: KvBlockIndex | None = (
            KvBlockIndex() if config.is_kv_events_enabled else None
        )
        self._approx_index = ApproxPrefixIndex()  # the handler's, shared by its plugins
        self._block_size = first.block_size
        try:
            self._handler: ProfileHandler = build_handler(
                dict(config.routing),
                resources=RoutingResources(
                    kv_index=self._kv_index, approx_index=self._approx_index
                ),
            )
        except ValueError as exc:
            raise ClusterConfigError(f"routing.{exc}") from None
        self._rng = np.random.default_rng(config.seed)
        # The front end's draws have their own stream: the routing's stays as it was.
        self._overhead_rng = np.random.default_rng([config.seed, 1])
        self._overhead_samples_s = np.asarray(config.frontend_overhead_samples_s, dtype=float)
        self._queue = EventQueue()
        self._records: list[RequestRecord] = []
        self._calls: dict[str, _CallState] = {}
        self._decisions: dict[str, int] = {r.endpoint_id: 0 for r in self._replicas}
        self._routed_to: dict[str, str] = {}
        self._num_open_sessions = 0
        self._waiting: deque[_Waiter] = deque()
        self._is_pd = config.is_disaggregated
        self._num_kv_transfers = 0
        self._kv_transfer_s = 0.0
        self._rejections: dict[str, int] = {}
        self._max_queue_depth = 0
        self._busy_s = {r.endpoint_id: 0.0 for r in self._replicas}

    # -- running ----------------------------------------------------------------
    def run(self, arrivals: Iterable[tuple[float, Session]]) -> ClusterRun:
        """Simulate every session to completion; `arrivals` are (time_s, session)."""
        q = self._queue
        first_arrival: float | None = None
        for time_s, session in arrivals:
            q.push(time_s, EventKind.ARRIVAL, session)
            self._num_open_sessions += 1
            first_arrival = time_s if first_arrival is None else min(first_arrival, time_s)
        if first_arrival is None:
            return ClusterRun((), 0.0, self._stats(), 0, dict(self._decisions))

        q.push(first_arrival, EventKind.SCRAPE)
        num_events = 0
        last_token_at = first_arrival
        while q:
            ev = q.pop()
            num_events += 1
            kind = ev.kind
            if kind is EventKind.STEP_END:
                if self._step_end(ev.payload, ev.time_s):
                    last_token_at = max(last_token_at, ev.time_s)
            elif kind is EventKind.KV_EVENTS:
                endpoint_id, batch = ev.payload
                assert self._kv_index is not None
                self._kv_index.apply(endpoint_id, batch)
            elif kind is EventKind.SCRAPE:
                self._scrape(ev.time_s)
                if self._num_open_sessions:
                    q.push(ev.time_s + self.config.scrape_interval_s, EventKind.SCRAPE)
            elif kind is EventKind.STAGE:
                self._send_stage(ev.payload, ev.time_s)
            elif kind is EventKind.DISPATCH:
                call, state, sent_at = ev.payload
                self._dispatch(call, state, sent_at, ev.time_s)
            elif kind is EventKind.KV_TRANSFER:
                self._kv_arrived(ev.payload, ev.time_s)
            elif kind is EventKind.ADMISSION_TIMEOUT:
                self._wait_timeout(ev.payload, ev.time_s)
            elif kind is EventKind.ARRIVAL:
                state = _SessionState(ev.payload)
                self._schedule_stage(state, ev.time_s)
        assert not self._waiting and not self._calls
        return ClusterRun(
            tuple(self._records),
            last_token_at - first_arrival,
            self._stats(),
            num_events,
            dict(self._decisions),
            dict(sorted(self._rejections.items())),
            self._max_queue_depth,
            self._num_kv_transfers,
            self._kv_transfer_s / self._num_kv_transfers if self._num_kv_transfers else 0.0,
            dict(self._routed_to),
        )

    def _schedule_stage(self, state: _SessionState, now_s: float) -> None:
        stages = state.session.stages
        if state.stage_index >= len(stages):
            self._num_open_sessions -= 1
            return
        self._queue.push(now_s + stages[state.stage_index].delay_s, EventKind.STAGE, state)

    def _send_stage(self, state: _SessionState, now_s: float) -> None:
        stage = state.session.stages[state.stage_index]
        state.num_open_calls = len(stage.calls)
        for call in stage.calls:
            overhead_s = self._frontend_overhead_s()
            if overhead_s > 0:
                self._queue.push(now_s + overhead_s, EventKind.DISPATCH, (call, state, now_s))
            else:
                self._dispatch(call, state, now_s, now_s)
        if not stage.calls:
            state.stage_index += 1
            self._schedule_stage(state, now_s)

    def _frontend_overhead_s(self) -> float:
        """One call's front-end time: the constant, or a draw from the samples."""
        samples = self._overhead_samples_s
        if not len(samples):
            return self.config.frontend_overhead_s
        return float(samples[self._overhead_rng.integers(len(samples))])

    def _dispatch(self, call: Call, state: _SessionState, sent_at: float, now_s: float) -> None:
        """Admit a call sent at `sent_at`: route it at `now_s`, or queue it for a slot
        (or reject it) when admission control finds every replica at its cap."""
        limits = self.config.admission
        if limits is not None and (self._waiting or not self._has_free_slot(limits)):
            # Every replica is full, or others wait already: queue behind them.
            if len(self._waiting) >= limits.max_queue:
                self._reject(call, state, sent_at, now_s, "queue_full")
                return
            waiter = _Waiter(call, state, sent_at)
            self._waiting.append(waiter)
            self._max_queue_depth = max(self._max_queue_depth, len(self._waiting))
            self._queue.push(now_s + limits.max_wait_s, EventKind.ADMISSION_TIMEOUT, waiter)
            return
        self._route(call, state, sent_at, now_s)

    def _has_free_slot(self, limits: AdmissionLimits) -> bool:
        cap = limits.max_in_flight_per_endpoint
        return any(r.num_in_flight_requests < cap for r in self._replicas)

    def _serve_waiting(self, now_s: float) -> None:
        """Hand free slots to the head of the admission queue, in order, while any."""
        limits = self.config.admission
        assert limits is not None
        while self._waiting and self._has_free_slot(limits):
            waiter = self._waiting.popleft()
            waiter.is_done = True
            self._route(waiter.call, waiter.session, waiter.sent_at, now_s)

    def _wait_timeout(self, waiter: _Waiter, now_s: float) -> None:
        if waiter.is_done:
            return
        waiter.is_done = True
        self._waiting.remove(waiter)
        self._reject(waiter.call, waiter.session, waiter.sent_at, now_s, "wait_timeout")

    def _reject(
        self, call: Call, state: _SessionState, sent_at: float, now_s: float, reason: str
    ) -> None:
        self._rejections[reason] = self._rejections.get(reason, 0) + 1
        self._records.append(_failed_record(call, state, sent_at, "http_429", status=429))
        self._call_done(state, now_s)

    def _route(self, call: Call, state: _SessionState, sent_at: float, now_s: float) -> None:
        """Route a call sent at `sent_at` and hand it to its engine at `now_s`."""
        token_ids, hashes, hash_ints = self._encoder.encode_with_ints(call)
        headers = Headers.of(call.headers)
        ctx = RequestContext(
            request_id=call.call_id,
            model=self.model_name,
            num_prompt_tokens_est=len(token_ids),
            max_output_tokens=call.max_tokens,
            block_hashes=hash_ints,
            chunk_hashes=self._encoder.chunk_hashes(call),
            headers=headers,
            session_id=headers.get("x-session-id"),
        )
        snapshots = self._snapshots()
        limits = self.config.admission
        if limits is not None:
            # The gateway routes among the endpoints below their cap only.
            cap = limits.max_in_flight_per_endpoint
            snapshots = [s for s in snapshots if s.num_in_flight_requests < cap]
        prefill: _Replica | None = None
        if self._is_pd:
            # The decode replica with the routing profile, then the prefill replica
            # with the same profile among the prefill pool.
            roles = {r.endpoint_id: r.role for r in self._replicas}
            pre = [s for s in snapshots if roles[s.endpoint_id] == ReplicaRole.PREFILL]
            snapshots = [s for s in snapshots if roles[s.endpoint_id] == ReplicaRole.DECODE]
            pre_result = self._handler.decide(ctx, pre, now=now_s, rng=self._rng, timer=_zero_timer)
            if pre_result.is_routed:
                self._handler.observe(ctx, pre_result)
                assert pre_result.decision.endpoint_id is not None
                prefill = self._by_id[pre_result.decision.endpoint_id]
        result = self._handler.decide(ctx, snapshots, now=now_s, rng=self._rng, timer=_zero_timer)
        if not result.is_routed or (self._is_pd and prefill is None):
            self._records.append(_failed_record(call, state, sent_at, "no_endpoint"))
            self._call_done(state, now_s)
            return
        endpoint_id = result.decision.endpoint_id
        assert endpoint_id is not None
        # The gateway's charge: prompt + most output, less the expected cache hit
        # (gateway/routing.py `Route.charged_tokens`), known before `observe` records it.
        expected = expected_cached_tokens(
            ctx, endpoint_id, self._kv_index, self._approx_index, self._block_size
        )
        self._handler.observe(ctx, result)
        replica = self._by_id[endpoint_id]
        self._decisions[endpoint_id] += 1
        self._routed_to[call.call_id] = endpoint_id
        reserved = max(0, len(token_ids) + call.max_tokens - expected)
        replica.num_in_flight_requests += 1
        replica.num_in_flight_tokens += reserved
        if replica.num_in_flight_requests > replica.max_in_flight_requests:
            replica.max_in_flight_requests = replica.num_in_flight_requests
        cs = _CallState(call, state, replica, sent_at, len(token_ids), reserved)
        self._calls[call.call_id] = cs
        if prefill is not None:
            # The prompt and one token on the prefill replica; the call reaches its
            # decode replica when the KV does (`_prefill_done`, `_kv_arrived`).
            cs.prefill = prefill
            cs.prefill_reserved_tokens = len(token_ids) + 1
            cs.token_ids, cs.block_hashes = token_ids, hashes
            self._decisions[prefill.endpoint_id] += 1
            prefill.num_in_flight_requests += 1
            prefill.num_in_flight_tokens += cs.prefill_reserved_tokens
            prefill.max_in_flight_requests = max(
                prefill.max_in_flight_requests, prefill.num_in_flight_requests
            )
            request = EngineRequest(
                call.call_id, token_ids, 1, ignore_eos=True, prompt_block_hashes=hashes
            )
            self._add_to_engine(prefill, request, now_s)
            return
        request = EngineRequest(
            request_id=call.call_id,
            prompt_token_ids=token_ids,
            max_tokens=call.max_tokens,
            ignore_eos=True,
            prompt_block_hashes=hashes,
        )
        self._add_to_engine(replica, request, now_s)

    def _add_to_engine(self, replica: _Replica, request: EngineRequest, now_s: float) -> None:
        if replica.is_busy:
            self._cut_jump(replica, now_s)
        replica.engine.add_request(request)
        if not replica.is_busy:
            self._start_step(replica, now_s)

    def _prefill_done(self, cs: _CallState, now_s: float) -> None:
        """The prefill replica computed the prompt: its KV crosses that replica's link
        (one transfer at a time) to the decode replica."""
        prefill = cs.prefill
        assert prefill is not None
        cs.prefill = None
        prefill.num_in_flight_requests -= 1
        prefill.num_in_flight_tokens -= cs.prefill_reserved_tokens
        d = prefill.resolved.cost_model.deployment
        num_bytes = cs.num_prompt_tokens * d.model.kv_bytes_per_token(d.precision.kv_cache)
        start_s = max(now_s, prefill.link_free_at)
        prefill.link_free_at = start_s + num_bytes / self.config.kv_link_bytes_per_s
        arrive_s = prefill.link_free_at + self.config.kv_link_latency_s
        self._num_kv_transfers += 1
        self._kv_transfer_s += arrive_s - now_s
        self._queue.push(arrive_s, EventKind.KV_TRANSFER, cs)

    def _kv_arrived(self, cs: _CallState, now_s: float) -> None:
        n = cs.num_prompt_tokens
        request = EngineRequest(
            request_id=cs.call.call_id,
            prompt_token_ids=cs.token_ids,
            max_tokens=cs.call.max_tokens,
            ignore_eos=True,
            prompt_block_hashes=cs.block_hashes,
            num_external_computed_tokens=n,
        )
        self._add_to_engine(cs.replica, request, now_s)

    def _start_step(self, replica: _Replica, now_s: float) -> None:
        engine = replica.engine
        max_jump = self.config.max_decode_jump_steps
        if max_jump > 1:
            costs = engine.plan_decode_jump(max_jump)
            if costs:
                # A plain decode run from here: the engine takes its steps lazily.
                end_s = now_s
                ends = []
                for cost in costs:
                    end_s += cost.duration_s
                    ends.append(end_s)
                replica.is_busy = True
                replica.step_ends = ends
                replica.num_taken = 0
                replica.results = []
                replica.step_end_gen += 1
                self._queue.push(
                    end_s,
                    EventKind.STEP_END,
                    (replica, replica.step_end_gen),
                    tiebreak=replica.index,
                )
                return
        result = engine.step()
        if result.is_idle:
            # Cannot happen while the engine has work: add_request admits only requests
            # that fit an empty pool, and a running batch always makes progress.
            replica.is_busy = False
            return
        replica.is_busy = True
        self._busy_s[replica.endpoint_id] += result.duration_s
        end_s = now_s + result.duration_s
        ends = [end_s]
        if max_jump > 1 and result.is_silent:
            # Added one at a time, as single steps' ends would be.
            for cost in engine.plan_decode_jump(max_jump - 1):
                end_s += cost.duration_s
                ends.append(end_s)
        replica.step_ends = ends
        replica.num_taken = 1
        replica.results = [result]
        replica.step_end_gen += 1
        self._queue.push(
            end_s, EventKind.STEP_END, (replica, replica.step_end_gen), tiebreak=replica.index
        )

    def _take_steps(self, replica: _Replica, now_s: float) -> None:
        """Let the engine take the planned steps that started by `now_s` (a step
        starts when the one before it ends), as single steps would have by then."""
        ends = replica.step_ends
        target = 1 + bisect_right(ends, now_s, 0, len(ends) - 1)
        num_steps = target - replica.num_taken
        if num_steps <= 0:
            return
        result = replica.engine.decode_jump(num_steps)
        busy = self._busy_s[replica.endpoint_id]
        for d in result.step_durations_s:
            busy += d
        self._busy_s[replica.endpoint_id] = busy
        replica.results.append(result)
        replica.num_taken = target

    def _cut_jump(self, replica: _Replica, now_s: float) -> None:
        """A request reaches a replica in a decode jump: the run ends with the step in
        progress, and the next step (with the request) starts when that one ends."""
        self._take_steps(replica, now_s)
        ends = replica.step_ends
        if replica.num_taken < len(ends):
            del ends[replica.num_taken :]
            replica.step_end_gen += 1
            self._queue.push(
                ends[-1],
                EventKind.STEP_END,
                (replica, replica.step_end_gen),
                tiebreak=replica.index,
            )

    def _step_end(self, payload: tuple[_Replica, int], now_s: float) -> bool:
        """Deliver the steps ending at `now_s`; False for a cut jump's stale event."""
        replica, gen = payload
        if gen != replica.step_end_gen:
            return False
        ends = replica.step_ends
        if replica.num_taken < len(ends):
            self._take_steps(replica, now_s)
        # Only the last step can finish a request or emit KV events; tokens of the
        # steps before it are delivered now with their own step-end times.
        i = 0
        for result in replica.results:
            m = result.num_steps
            if result.events and self._kv_index is not None:
                batch = EventBatch(ts=now_s, events=result.events)
                self._queue.push(
                    now_s + self.config.kv_event_delay_s,
                    EventKind.KV_EVENTS,
                    (replica.endpoint_id, batch),
                )
            for out in result.outputs:
                cs = self._calls[out.request_id]
                if cs.prefill is replica:  # P/D: the prefill's token is not the client's
                    if out.finish_reason is not None:
                        self._prefill_done(cs, now_s)
                    continue
                if m == 1:
                    cs.chunk_times.append(ends[i])
                else:
                    cs.chunk_times.extend(ends[i : i + m])
                cs.num_cached_tokens = out.num_cached_tokens
                if out.finish_reason is not None:
                    self._finish(cs, now_s)
            i += m
        replica.results = []
        if replica.engine.has_work:
            self._start_step(replica, now_s)
        else:
            replica.is_busy = False
        return True

    def _finish(self, cs: _CallState, now_s: float) -> None:
        del self._calls[cs.call.call_id]
        replica = cs.replica
        replica.num_in_flight_requests -= 1
        replica.num_in_flight_tokens -= cs.reserved_tokens
        first = cs.chunk_times[0]
        self._records.append(
            RequestRecord(
                call_id=cs.call.call_id,
                session_id=cs.session.session.session_id,
                sent_at=cs.sent_at,
                first_choice_at=first,
                first_content_at=first,
                chunk_times=tuple(cs.chunk_times),
                chunk_tokens=tuple(1 for _ in cs.chunk_times),
                last_token_at=cs.chunk_times[-1],
                prompt_tokens=cs.num_prompt_tokens,
                output_tokens=len(cs.chunk_times),
                cached_tokens=cs.num_cached_tokens,
            )
        )
        self._call_done(cs.session, now_s)
        if self._waiting:
            self._serve_waiting(now_s)  # the freed slot goes to the head of the queue

    def _call_done(self, state: _SessionState, now_s: float) -> None:
        state.num_open_calls -= 1
        if state.num_open_calls == 0:
            state.stage_index += 1
            self._schedule_stage(state, now_s)

    # -- the gateway's view -------------------------------------------------------
    def _scrape(self, now_s: float) -> None:
        for r in self._replicas:
            if r.num_taken < len(r.step_ends):
                self._take_steps(r, now_s)
            r.scraped_waiting = r.engine.num_waiting
            r.scraped_running = r.engine.num_running
            r.scraped_kv_usage = min(1.0, max(0.0, r.engine.kv_usage))
            r.scraped_at = now_s

    def _snapshots(self) -> list[EndpointSnapshot]:
        return [self._snapshot(r) for r in self._replicas]

    def _snapshot(self, r: _Replica) -> EndpointSnapshot:
        """`r`'s snapshot, rebuilt only when a scrape or its in-flight counts changed it
        (snapshots are immutable values; building 64 per decision dominated routing)."""
        key = (r.scraped_at, r.num_in_flight_requests, r.num_in_flight_tokens)
        if r.snapshot is not None and r.snapshot_key == key:
            return r.snapshot
        r.snapshot_key = key
        r.snapshot = EndpointSnapshot(
            endpoint_id=r.endpoint_id,
            models=self._models,
            num_queued_requests=r.scraped_waiting,
            num_running_requests=r.scraped_running,
            kv_cache_usage=r.scraped_kv_usage,
            num_in_flight_requests=r.num_in_flight_requests,
            num_in_flight_tokens=r.num_in_flight_tokens,
            metrics_updated_at=r.scraped_at,
            block_size=r.resolved.config.block_size,
            num_gpu_blocks=r.resolved.config.num_gpu_blocks,
        )
        return r.snapshot

    def _stats(self) -> tuple[ReplicaStats, ...]:
        out = []
        for r in self._replicas:
            c = r.engine.counters
            out.append(
                ReplicaStats(
                    r.endpoint_id,
                    c.num_steps,
                    c.num_prompt_tokens,
                    c.num_generation_tokens,
                    c.num_prefix_query_tokens,
                    c.num_prefix_hit_tokens,
                    c.num_preemptions,
                    self._busy_s[r.endpoint_id],
                    r.max_in_flight_requests,
                )
            )
        return tuple(out)


def _zero_timer() -> float:
    # Plugin timings are not part of a simulation's output (they would make runs
    # irreproducible), so the framework's timer reads a constant.
    return 0.0


def _failed_record(
    call: Call, session: _SessionState, now_s: float, kind: str, status: int | None = None
) -> RequestRecord:
    return RequestRecord(
        call_id=call.call_id,
        session_id=session.session.session_id,
        sent_at=now_s,
        first_choice_at=None,
        first_content_at=None,
        chunk_times=(),
        chunk_tokens=None,
        last_token_at=None,
        prompt_tokens=None,
        output_tokens=None,
        cached_tokens=None,
        error=kind,
        status=status,
    )

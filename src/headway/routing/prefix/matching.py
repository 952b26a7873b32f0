"""Prefix match lengths computed once per decision and shared through `RequestScratch`.

The prefix filter and the prefix scorers of one profile run ask the same question
("how much of this prompt does each endpoint hold?") of the same indexes: the
handler's shared `RoutingResources`. The first plugin to ask computes the answer for
all of its candidates and writes it under a scratch key; later plugins of the run see
a subset of those candidates (filters only narrow) and read it back.

`prefix_fractions` merges the two sources per endpoint: the precise KV-event index
where it can be trusted (the request has engine block hashes and the endpoint is not
marked stale), else the approximate index over the gateway's chunk hashes. A stale or
event-less endpoint therefore degrades to approximate routing instead of scoring 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from headway.routing.context import RequestContext
from headway.routing.plugin import Endpoints
from headway.routing.prefix.approx_index import ApproxPrefixIndex
from headway.routing.prefix.kv_index import KvBlockIndex
from headway.routing.state import RequestScratch, ScratchKey

PRECISE_MATCH_BLOCKS: ScratchKey[Mapping[str, int]] = ScratchKey("prefix.precise-match-blocks")
"""Leading `ctx.block_hashes` each candidate holds, per the KV-event index."""

APPROX_MATCH_CHUNKS: ScratchKey[Mapping[str, int]] = ScratchKey("prefix.approx-match-chunks")
"""Leading `ctx.chunk_hashes` recorded for each candidate in the approximate index."""


def _shared(
    key: ScratchKey[Mapping[str, int]],
    scratch: RequestScratch,
    endpoints: Endpoints,
    compute: Callable[[Sequence[str]], dict[str, int]],
) -> Mapping[str, int]:
    ids = [e.endpoint_id for e in endpoints]
    if key in scratch:
        known = scratch.get(key)
        if all(i in known for i in ids):
            return known
        return compute(ids)  # a direct caller with other candidates: do not overwrite
    lengths = compute(ids)
    scratch.put(key, lengths)
    return lengths


def precise_match_blocks(
    ctx: RequestContext, endpoints: Endpoints, scratch: RequestScratch, index: KvBlockIndex
) -> Mapping[str, int]:
    """Leading request blocks each endpoint holds (computed once per run)."""
    return _shared(
        PRECISE_MATCH_BLOCKS,
        scratch,
        endpoints,
        lambda ids: index.match_lengths(ctx.block_hashes, ids),
    )


def approx_match_chunks(
    ctx: RequestContext, endpoints: Endpoints, scratch: RequestScratch, index: ApproxPrefixIndex
) -> Mapping[str, int]:
    """Leading request chunks recorded for each endpoint (computed once per run)."""
    return _shared(
        APPROX_MATCH_CHUNKS,
        scratch,
        endpoints,
        lambda ids: index.match_lengths(ctx.chunk_hashes, ids),
    )


def approx_fractions(
    ctx: RequestContext, endpoints: Endpoints, scratch: RequestScratch, index: ApproxPrefixIndex
) -> dict[str, float]:
    """Matched share of `ctx.chunk_hashes` per endpoint; all 0.0 without chunk hashes."""
    num = len(ctx.chunk_hashes)
    if num == 0:
        return {e.endpoint_id: 0.0 for e in endpoints}
    lengths = approx_match_chunks(ctx, endpoints, scratch, index)
    return {e.endpoint_id: lengths[e.endpoint_id] / num for e in endpoints}


def prefix_fractions(
    ctx: RequestContext,
    endpoints: Endpoints,
    scratch: RequestScratch,
    kv_index: KvBlockIndex | None,
    approx_index: ApproxPrefixIndex,
) -> dict[str, float]:
    """Matched share of the prompt per endpoint, in [0, 1]: precise where trusted,
    approximate elsewhere (see the module docstring)."""
    num_blocks = len(ctx.block_hashes)
    if kv_index is None or num_blocks == 0:
        return approx_fractions(ctx, endpoints, scratch, approx_index)
    fresh = tuple(e for e in endpoints if not kv_index.is_stale(e.endpoint_id))
    out: dict[str, float] = {}
    if len(fresh) != len(endpoints):
        stale = tuple(e for e in endpoints if kv_index.is_stale(e.endpoint_id))
        out.update(approx_fractions(ctx, stale, scratch, approx_index))
    if fresh:
        lengths = precise_match_blocks(ctx, fresh, scratch, kv_index)
        for e in fresh:
            out[e.endpoint_id] = lengths[e.endpoint_id] / num_blocks
    return {e.endpoint_id: out[e.endpoint_id] for e in endpoints}


def expected_cached_tokens(
    ctx: RequestContext,
    endpoint_id: str,
    kv_index: KvBlockIndex | None,
    approx_index: ApproxPrefixIndex | None,
    block_size: int | None,
) -> int:
    """Prompt tokens `endpoint_id` is expected to serve from its prefix cache for `ctx`.

    Precise where the KV-event index can be trusted (engine block hashes, a known block
    size, the endpoint not stale): the leading matched blocks x block size (the hashes
    already leave out the prompt's last token, vLLM's rule). Else approximate: the
    matched share of the gateway's chunk hashes x the prompt's token estimate. 0 when
    neither index knows the prompt. Never more than `ctx.num_prompt_tokens_est - 1`.

    The gateway and the cluster simulation charge a request's in-flight token load
    net of this (a cache hit costs the engine no prefill work and no new KV blocks),
    so a cache holder's load reflects the work queued on it, not the prompt lengths
    it happens to serve from cache.
    """
    num_prompt = ctx.num_prompt_tokens_est
    cached = 0
    if (
        kv_index is not None
        and ctx.block_hashes
        and block_size
        and not kv_index.is_stale(endpoint_id)
    ):
        matched = kv_index.match_lengths(ctx.block_hashes, (endpoint_id,))[endpoint_id]
        cached = matched * block_size
    elif approx_index is not None and ctx.chunk_hashes:
        matched = approx_index.match_lengths(ctx.chunk_hashes, (endpoint_id,))[endpoint_id]
        cached = matched * num_prompt // len(ctx.chunk_hashes)
    return max(0, min(cached, num_prompt - 1))

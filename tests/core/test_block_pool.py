"""BlockPool: allocation, LRU eviction, prefix lookup, KV events, and block conservation."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from headway.core.block_hash import to_event_int
from headway.core.block_pool import BlockPool, OutOfBlocksError
from headway.core.kv_events import AllBlocksCleared, BlockRemoved, BlockStored

BS = 4


def h(k: int) -> bytes:
    """A 32-byte stand-in digest for content k."""
    return bytes([k % 256]) * 31 + bytes([k // 256])


def toks(k: int) -> list[int]:
    return [k * 100 + i for i in range(BS)]


def cache(
    pool: BlockPool, block_ids: list[int], ks: list[int], parent: bytes | None = None
) -> None:
    tokens = [t for k in ks for t in toks(k)]
    pool.cache_blocks(block_ids, [h(k) for k in ks], tokens, parent)


# -- construction ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_blocks", "block_size", "field"),
    [(0, 16, "num_blocks"), (-1, 16, "num_blocks"), (4, 0, "block_size")],
    ids=["zero-blocks", "negative-blocks", "zero-block-size"],
)
def test_constructor_rejects(num_blocks: int, block_size: int, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        BlockPool(num_blocks, block_size)


# -- allocation and LRU eviction ---------------------------------------------------------


@pytest.mark.parametrize(
    ("free_order", "num_alloc", "expected_ids"),
    [
        ([0, 1, 2, 3], 2, [0, 1]),
        ([3, 2, 1, 0], 2, [3, 2]),
        ([2, 0, 3, 1], 3, [2, 0, 3]),
        ([1, 3, 0, 2], 4, [1, 3, 0, 2]),
    ],
    ids=["in-order", "reversed", "shuffled", "all"],
)
def test_eviction_is_lru_over_free_order(
    free_order: list[int], num_alloc: int, expected_ids: list[int]
) -> None:
    pool = BlockPool(4, BS)
    ids = pool.allocate(4)
    assert ids == [0, 1, 2, 3]
    cache(pool, ids, [10, 11, 12, 13])
    pool.drain_events()
    assert pool.free(free_order) == 4
    got = pool.allocate(num_alloc)
    assert got == expected_ids
    removed = [e for e in pool.drain_events() if isinstance(e, BlockRemoved)]
    assert [e.block_hashes for e in removed] == [(to_event_int(h(10 + b)),) for b in expected_ids]
    assert pool.num_evicted_blocks == num_alloc
    for b in expected_ids:
        assert pool.block_hash(b) is None
    pool.check_invariants()


def test_tail_first_free_evicts_end_of_prefix_first() -> None:
    pool = BlockPool(4, BS)
    ids = pool.allocate(3)
    cache(pool, ids, [1, 2, 3])
    pool.free(reversed(ids))  # as KvCacheManager.free does
    # The never-used block 3 sits ahead of them in the queue; then the tail (block 2).
    assert pool.allocate(2) == [3, 2]
    hit = pool.find_prefix([h(1), h(2), h(3)], max_blocks=3)
    assert hit.block_ids == (0, 1)


@pytest.mark.parametrize(
    ("allocate", "free_ids", "touch_ids", "expected_free", "expected_refs"),
    [
        (2, [], [], 2, {0: 1, 1: 1}),
        (2, [0], [], 3, {0: 0, 1: 1}),
        (2, [0, 1], [0], 3, {0: 1, 1: 0}),
        (2, [], [0, 0], 2, {0: 3, 1: 1}),
        (4, [3, 2, 1, 0], [2, 3], 2, {2: 1, 3: 1, 0: 0}),
    ],
    ids=["alloc", "alloc-free", "free-then-touch", "touch-shared", "touch-two-free"],
)
def test_ref_counts_and_free_count(
    allocate: int,
    free_ids: list[int],
    touch_ids: list[int],
    expected_free: int,
    expected_refs: dict[int, int],
) -> None:
    pool = BlockPool(4, BS)
    pool.allocate(allocate)
    pool.free(free_ids)
    pool.touch(touch_ids)
    assert pool.num_free == expected_free
    assert pool.num_in_use == 4 - expected_free
    assert pool.usage == pytest.approx((4 - expected_free) / 4)
    for b, rc in expected_refs.items():
        assert pool.ref_count(b) == rc
    pool.check_invariants()


def test_free_returns_only_blocks_that_became_free() -> None:
    pool = BlockPool(4, BS)
    ids = pool.allocate(2)
    pool.touch([ids[0]])
    assert pool.free(ids) == 1  # ids[0] still has a reference
    assert pool.free([ids[0]]) == 1


def test_allocate_more_than_free_raises_and_changes_nothing() -> None:
    pool = BlockPool(3, BS)
    pool.allocate(2)
    with pytest.raises(OutOfBlocksError):
        pool.allocate(2)
    assert pool.num_free == 1
    pool.check_invariants()


def test_double_free_raises() -> None:
    pool = BlockPool(2, BS)
    (b,) = pool.allocate(1)
    pool.free([b])
    with pytest.raises(RuntimeError, match="freed more often"):
        pool.free([b])


# -- caching and events --------------------------------------------------------------


@pytest.mark.parametrize(
    ("ks", "parent", "lora_id", "lora_name", "extra_keys"),
    [
        ([1], None, None, None, None),
        ([1, 2, 3], None, None, None, None),
        ([4, 5], h(3), None, None, None),
        ([6], h(5), 7, "adapter", [("adapter",)]),
    ],
    ids=["one-root-block", "three-root-blocks", "with-parent", "lora"],
)
def test_cache_blocks_emits_block_stored(
    ks: list[int],
    parent: bytes | None,
    lora_id: int | None,
    lora_name: str | None,
    extra_keys: list[tuple] | None,
) -> None:
    pool = BlockPool(8, BS, medium="GPU")
    ids = pool.allocate(len(ks))
    tokens = [t for k in ks for t in toks(k)]
    pool.cache_blocks(ids, [h(k) for k in ks], tokens, parent, lora_id, lora_name, extra_keys)
    (ev,) = pool.drain_events()
    assert ev == BlockStored(
        block_hashes=tuple(to_event_int(h(k)) for k in ks),
        parent_block_hash=to_event_int(parent) if parent is not None else None,
        token_ids=tuple(tokens),
        block_size=BS,
        lora_id=lora_id,
        medium="GPU",
        lora_name=lora_name,
        # One entry per block, as vLLM 0.32 publishes them.
        extra_keys=tuple(extra_keys) if extra_keys else (None,) * len(ks),
        group_idx=0,
        kv_cache_spec_kind="full_attention",
    )
    assert pool.drain_events() == []
    assert set(pool.cached_hashes()) == {h(k) for k in ks}
    for b, k in zip(ids, ks, strict=True):
        assert pool.block_hash(b) == h(k)


def test_cache_nothing_emits_nothing() -> None:
    pool = BlockPool(2, BS)
    pool.cache_blocks([], [], [], None)
    assert pool.drain_events() == []


@pytest.mark.parametrize(
    ("query", "max_blocks", "expected"),
    [
        ([1, 2, 3], 3, (0, 1, 2)),
        ([1, 2, 3], 2, (0, 1)),
        ([1, 2, 3], 0, ()),
        ([1, 9, 3], 3, (0,)),
        ([9, 2, 3], 3, ()),
        ([], 3, ()),
        ([1, 2, 3, 4], 10, (0, 1, 2)),
    ],
    ids=["full", "capped", "zero-cap", "stops-at-miss", "first-miss", "empty", "longer-query"],
)
def test_find_prefix(query: list[int], max_blocks: int, expected: tuple[int, ...]) -> None:
    pool = BlockPool(4, BS)
    ids = pool.allocate(3)
    cache(pool, ids, [1, 2, 3])
    hit = pool.find_prefix([h(k) for k in query], max_blocks)
    assert hit.block_ids == expected
    assert hit.num_blocks == len(expected)


def test_free_cached_blocks_are_still_hits_and_evictable() -> None:
    pool = BlockPool(3, BS)
    ids = pool.allocate(2)
    cache(pool, ids, [1, 2])
    pool.free(reversed(ids))
    hit = pool.find_prefix([h(1), h(2)], 2)
    assert hit.block_ids == (0, 1)
    assert pool.num_evictable_in(hit.block_ids) == 2
    pool.touch(hit.block_ids)
    assert pool.num_evictable_in(hit.block_ids) == 0
    assert pool.num_free == 1


def test_duplicate_hash_in_two_blocks() -> None:
    pool = BlockPool(4, BS)
    a = pool.allocate(1)
    b = pool.allocate(1)
    cache(pool, a, [7])
    cache(pool, b, [7])  # two identical prompts computed at once
    events = pool.drain_events()
    assert [type(e) for e in events] == [BlockStored, BlockStored]
    assert pool.cached_hashes() == [h(7)]
    assert pool.find_prefix([h(7)], 1).block_ids[0] in (a[0], b[0])
    pool.free(a)
    pool.free(b)
    pool.check_invariants()
    # Blocks 2 and 3 are free ahead of them; then `a` is evicted, `b` still serves hits.
    pool.allocate(3)
    assert pool.find_prefix([h(7)], 1).block_ids == (b[0],)
    pool.check_invariants()
    pool.allocate(1)
    assert pool.find_prefix([h(7)], 1).block_ids == ()
    removed = [e for e in pool.drain_events() if isinstance(e, BlockRemoved)]
    assert [e.block_hashes for e in removed] == [(to_event_int(h(7)),)] * 2
    assert pool.cached_hashes() == []


@pytest.mark.parametrize(
    ("in_use", "enable_caching", "expected_ok", "expected_events"),
    [
        (0, True, True, [AllBlocksCleared()]),
        (1, True, False, []),
        (0, False, True, []),
    ],
    ids=["idle", "block-in-use", "caching-off"],
)
def test_reset_prefix_cache(
    in_use: int, enable_caching: bool, expected_ok: bool, expected_events: list
) -> None:
    pool = BlockPool(4, BS, enable_caching=enable_caching)
    ids = pool.allocate(2)
    cache(pool, ids, [1, 2])
    pool.free(ids[in_use:])
    pool.drain_events()
    assert pool.reset_prefix_cache() is expected_ok
    assert pool.drain_events() == expected_events
    if expected_ok:
        assert pool.cached_hashes() == []
        assert pool.find_prefix([h(1)], 1).block_ids == ()
        assert all(pool.block_hash(b) is None for b in range(4))
    elif enable_caching:
        assert set(pool.cached_hashes()) == {h(1), h(2)}
    pool.check_invariants()


def test_caching_disabled_never_hits_or_reports() -> None:
    pool = BlockPool(4, BS, enable_caching=False)
    ids = pool.allocate(2)
    cache(pool, ids, [1, 2])
    assert pool.drain_events() == []
    assert pool.find_prefix([h(1)], 1).block_ids == ()
    pool.free(ids)
    pool.allocate(4)
    assert pool.drain_events() == []
    assert pool.num_evicted_blocks == 0


# -- Hypothesis: a model of the pool ---------------------------------------------------


class BlockPoolMachine(RuleBasedStateMachine):
    """Drives a small pool with random operations against an explicit model:

    * `free_order`: the LRU queue (front = next evicted);
    * `content[b]`: the (hash, tokens) block b was cached with, until it is evicted;
    * `holdings`: block-id lists owned by simulated requests (each holds one ref per id).
    """

    NUM_BLOCKS = 6

    def __init__(self) -> None:
        super().__init__()
        self.pool = BlockPool(self.NUM_BLOCKS, BS)
        self.free_order: list[int] = list(range(self.NUM_BLOCKS))
        self.refs = [0] * self.NUM_BLOCKS
        self.content: dict[int, tuple[bytes, tuple[int, ...]]] = {}
        self.holdings: list[list[int]] = []
        self.uncached: set[int] = set()  # allocated blocks not yet given a hash

    # -- helpers --
    def _expect_removed(self, evicted: list[int]) -> None:
        removed = [e for e in self.pool.drain_events() if isinstance(e, BlockRemoved)]
        assert [e.block_hashes for e in removed] == [
            (to_event_int(self.content[b][0]),) for b in evicted
        ]

    # -- rules --
    @rule(n=st.integers(1, NUM_BLOCKS))
    def allocate(self, n: int) -> None:
        if n > len(self.free_order):
            with pytest.raises(OutOfBlocksError):
                self.pool.allocate(n)
            return
        got = self.pool.allocate(n)
        expected, self.free_order = self.free_order[:n], self.free_order[n:]
        assert got == expected
        evicted = [b for b in got if b in self.content]
        self._expect_removed(evicted)
        for b in got:
            self.content.pop(b, None)
            self.refs[b] = 1
            self.uncached.add(b)
        self.holdings.append(got)

    @precondition(lambda self: self.uncached)
    @rule(data=st.data(), parent=st.one_of(st.none(), st.integers(0, 5)))
    def cache(self, data: st.DataObject, parent: int | None) -> None:
        candidates = sorted(self.uncached)
        chosen = data.draw(st.lists(st.sampled_from(candidates), min_size=1, unique=True))
        # A small content universe so the same hash lands in several blocks.
        ks = data.draw(st.lists(st.integers(0, 4), min_size=len(chosen), max_size=len(chosen)))
        cache(self.pool, chosen, ks, h(parent) if parent is not None else None)
        (ev,) = self.pool.drain_events()
        assert isinstance(ev, BlockStored)
        assert ev.block_hashes == tuple(to_event_int(h(k)) for k in ks)
        assert ev.parent_block_hash == (to_event_int(h(parent)) if parent is not None else None)
        for b, k in zip(chosen, ks, strict=True):
            self.content[b] = (h(k), tuple(toks(k)))
            self.uncached.discard(b)

    @precondition(lambda self: self.holdings)
    @rule(data=st.data(), tail_first=st.booleans())
    def free(self, data: st.DataObject, tail_first: bool) -> None:
        i = data.draw(st.integers(0, len(self.holdings) - 1))
        ids = self.holdings.pop(i)
        order = list(reversed(ids)) if tail_first else ids
        became_free = 0
        for b in order:
            self.refs[b] -= 1
            if self.refs[b] == 0:
                self.free_order.append(b)
                self.uncached.discard(b)
                became_free += 1
        assert self.pool.free(order) == became_free

    @rule(ks=st.lists(st.integers(0, 4), max_size=4), max_blocks=st.integers(0, 4))
    def lookup_and_touch(self, ks: list[int], max_blocks: int) -> None:
        hit = self.pool.find_prefix([h(k) for k in ks], max_blocks)
        assert hit.num_blocks <= min(len(ks), max_blocks)
        for b, k in zip(hit.block_ids, ks, strict=False):
            # A hit is never a block that was evicted (and maybe reused) since caching.
            assert b in self.content, f"block {b} returned for a hash it no longer holds"
            assert self.content[b] == (h(k), tuple(toks(k)))
            assert self.pool.block_hash(b) == h(k)
        # The hit is the *longest* cached run: the next hash is not cached anywhere.
        n = hit.num_blocks
        if n < min(len(ks), max_blocks):
            assert all(c[0] != h(ks[n]) for c in self.content.values())
        if hit.block_ids:
            expected_free = sum(1 for b in set(hit.block_ids) if self.refs[b] == 0)
            assert self.pool.num_evictable_in(set(hit.block_ids)) == expected_free
            self.pool.touch(hit.block_ids)
            for b in hit.block_ids:
                if self.refs[b] == 0:
                    self.free_order.remove(b)
                self.refs[b] += 1
            self.holdings.append(list(hit.block_ids))

    @rule()
    def reset(self) -> None:
        ok = self.pool.reset_prefix_cache()
        assert ok == (not self.holdings)
        events = self.pool.drain_events()
        if ok:
            assert events == [AllBlocksCleared()]
            self.content.clear()
        else:
            assert events == []

    # -- invariants --
    @invariant()
    def conservation(self) -> None:
        self.pool.check_invariants()
        assert self.pool.num_free + self.pool.num_in_use == self.NUM_BLOCKS
        assert self.pool.num_free == len(self.free_order)
        for b in range(self.NUM_BLOCKS):
            assert self.pool.ref_count(b) == self.refs[b]

    @invariant()
    def cache_matches_model(self) -> None:
        assert set(self.pool.cached_hashes()) == {c[0] for c in self.content.values()}
        for b in range(self.NUM_BLOCKS):
            expected = self.content.get(b)
            assert self.pool.block_hash(b) == (expected[0] if expected else None)

    @invariant()
    def no_pending_events(self) -> None:
        assert self.pool.drain_events() == []


BlockPoolMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None
)
TestBlockPoolMachine = BlockPoolMachine.TestCase

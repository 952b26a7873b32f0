"""SharedEncodeCache: the same ids as the tokenizer, one encoding per long text."""

from __future__ import annotations

from headway.resources.tokenizer import SharedEncodeCache, default_tokenizer


def test_cached_ids_equal_fresh_ids_and_repeat_texts_hit() -> None:
    tok = default_tokenizer()
    shared = SharedEncodeCache(tok, max_entries=2, min_chars=10)
    long_a, long_b, long_c = ("alpha beta " * 20), ("gamma delta " * 20), ("eps " * 30)
    for text in (long_a, long_a, "short", long_b, long_a, long_c, long_b):
        assert shared.encode(text) == tok.encode(text)
    # long_a twice after its first time (2 hits), long_b evicted by long_c? LRU of 2:
    # a, a(hit), b, a(hit), c (evicts b), b (miss).
    assert shared.num_hits == 2
    ids = shared.encode(long_c)
    ids.append(-1)  # a caller mutating its list must not corrupt the cache
    assert shared.encode(long_c) == tok.encode(long_c)
    assert shared.source == tok.source and shared.eos_token_id == tok.eos_token_id

"""The request as routing sees it: one immutable `RequestContext`.

Everything a plugin may need about the request is a field here. A plugin that needs a
new input gets a new field (with a default, so existing callers keep working), never
a new method or a side channel.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Headers:
    """Immutable request headers: (lower-case name, value) pairs in arrival order.

    Repeated names are kept (HTTP allows them); `get` returns the first value.
    Build with `Headers.of(...)`, which lower-cases names.
    """

    pairs: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for name, _ in self.pairs:
            if name != name.lower():
                raise ValueError(f"headers: name {name!r} must be lower-case (use Headers.of)")

    @classmethod
    def of(cls, headers: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> Headers:
        items = headers.items() if isinstance(headers, Mapping) else headers
        return cls(tuple((name.lower(), value) for name, value in items))

    def get(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), None when absent."""
        key = name.lower()
        for n, value in self.pairs:
            if n == key:
                return value
        return None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)


@dataclass(frozen=True)
class Slo:
    """Latency objectives the client asked for; None: no objective."""

    ttft_s: float | None = None
    tpot_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("ttft_s", "tpot_s"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: must be > 0, got {value}")


@dataclass(frozen=True)
class RequestContext:
    """One request's routing inputs. Immutable; hashable.

    `model` is the base model name after alias resolution; a LoRA request names its
    adapter in `lora_adapter`.

    Two kinds of prefix keys, for the two prefix indexes:

    * `block_hashes`: ONLY engine-exact KV block hashes of the prompt's full blocks, as
      KV events publish them (64-bit ints, `core.block_hash.to_event_int`); looked up
      in the KV-event index (precise mode). Empty when not computed.
    * `chunk_hashes`: approximate mode: chained hashes of fixed-size text chunks of the
      prompt, computed by the gateway; looked up in the gateway-side index of prompts
      it routed. Empty when not computed.

    `session_id` is filled by the gateway from x-session-id / x-session-token / a
    configured header.
    """

    request_id: str
    model: str
    lora_adapter: str | None = None
    num_prompt_tokens_est: int = 0  # estimated prompt length (exact when tokenized)
    max_output_tokens: int | None = None  # the request's max_tokens, if given
    prompt_token_ids: tuple[int, ...] = ()
    text_chunks: tuple[str, ...] = ()
    block_hashes: tuple[int, ...] = ()
    chunk_hashes: tuple[int, ...] = ()
    headers: Headers = Headers()
    session_id: str | None = None
    tenant: str | None = None
    priority: int = 0  # higher is more important
    slo: Slo = Slo()

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model: must not be empty")
        if self.num_prompt_tokens_est < 0:
            raise ValueError(
                f"num_prompt_tokens_est: must be >= 0, got {self.num_prompt_tokens_est}"
            )
        if self.max_output_tokens is not None and self.max_output_tokens < 0:
            raise ValueError(f"max_output_tokens: must be >= 0, got {self.max_output_tokens}")

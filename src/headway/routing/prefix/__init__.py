"""Prefix indexes: which endpoint probably holds which prompt prefix in its KV cache.

* `KvBlockIndex` (precise): fed by the engines' KV events; keys are engine-exact KV
  block hashes (`RequestContext.block_hashes`).
* `ApproxPrefixIndex` (approximate): what this gateway routed; keys are the gateway's
  chained text-chunk hashes (`RequestContext.chunk_hashes`).
"""

from headway.routing.prefix.approx_index import ApproxPrefixIndex
from headway.routing.prefix.kv_index import KvBlockIndex

__all__ = ["ApproxPrefixIndex", "KvBlockIndex"]

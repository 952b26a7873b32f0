"""`RoutingResources`: objects shared by the plugins of every profile, owned by the caller.

The gateway (or the cluster simulator) builds them once and hands the same object to
`build_handler` for every pool that should share them; the KV-event subscriber feeds
`kv_index`. Plugins only read them while deciding (`ApproxPrefixIndex.record` is
called from `observe`, after a decision is committed).
"""

from __future__ import annotations

from dataclasses import dataclass

from headway.routing.prefix.approx_index import ApproxPrefixIndex
from headway.routing.prefix.kv_index import KvBlockIndex


@dataclass(frozen=True)
class RoutingResources:
    """Objects shared by plugins of every profile, owned by the caller (gateway/cluster).

    * `kv_index`: the KV-event index; None when the pool has no KV events, in which
      case a profile using `precise-prefix` is a config error.
    * `approx_index`: the gateway-side index of routed prompts' chunk hashes. None:
      `build_handler` makes a fresh one per handler, shared by that handler's
      plugins (approx-prefix, precise-prefix's fallback, prefix-affinity filter), so
      they agree and a decision computes its match lengths once. Pass one to share it
      between handlers or to call `remove_endpoint` when an endpoint leaves.
    """

    kv_index: KvBlockIndex | None = None
    approx_index: ApproxPrefixIndex | None = None

"""Typed configuration of a simulated fleet (from `headway sim` flags)."""

from __future__ import annotations

from dataclasses import dataclass, field

from headway.core.engine_factory import DEFAULT_PRECISION
from headway.core.kv_events import WireEncoding
from headway.sim.faults import FaultConfig


@dataclass(frozen=True)
class KvEventsSettings:
    """vLLM's `--kv-events-config` plus the simulator's port conventions.

    Replica i publishes on `endpoint`'s port + i and serves replay on
    `replay_endpoint`'s port + i (vLLM's data-parallel rule). With only
    `--kv-events-port Q`, the endpoints are tcp://*:Q and tcp://*:(Q + 1000).
    """

    endpoint: str
    replay_endpoint: str | None
    topic: str = ""
    encoding: WireEncoding = WireEncoding.MAP
    buffer_steps: int = 10_000


@dataclass(frozen=True)
class SimConfig:
    """Everything one `headway sim` process needs. Defaults follow vLLM where a router
    can observe them."""

    model: str = "llama-3.1-8b"
    served_model_names: tuple[str, ...] = ()
    gpu: str = "h100"
    precision: str = DEFAULT_PRECISION
    tp: int = 1
    num_replicas: int = 1
    host: str = "127.0.0.1"
    port: int = 8000
    time_scale: float = 1.0
    seed: int = 0
    block_size: int = 16
    max_num_seqs: int | None = None  # None: vLLM's default for the GPU's memory
    max_num_batched_tokens: int | None = None
    max_model_len: int | None = None
    num_gpu_blocks_override: int | None = None
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    enable_prompt_tokens_details: bool = False
    hash_seed: str | None = None
    tokenizer: str | None = None
    catalog_files: tuple[str, ...] = ()
    kv_events: KvEventsSettings | None = None
    faults: FaultConfig = field(default_factory=FaultConfig)
    fault_replicas: tuple[int, ...] | None = None  # None: all replicas
    max_body_bytes: int = 64 * 1024 * 1024
    mean_output_tokens: float = 200.0
    # The modeled API server's latency per request (model seconds): tokenisation,
    # input processing and the hops between vLLM's API process and its engine core.
    # A request reaches the engine this long after it arrived; TTFT and e2e latency
    # count it, queue time does not (as in vLLM's histograms). 0: no front end.
    api_overhead_s: float = 0.0
    # Processes the fleet's replicas are split across (contiguous index ranges); a
    # process started for one range has `replica_indices` set and starts no others.
    num_processes: int = 1
    replica_indices: tuple[int, ...] | None = None  # None: all replicas

    @property
    def names(self) -> tuple[str, ...]:
        return self.served_model_names or (self.model,)

    @property
    def own_replicas(self) -> tuple[int, ...]:
        """Indexes of the replicas this process runs."""
        if self.replica_indices is not None:
            return self.replica_indices
        return tuple(range(self.num_replicas))

    def process_slices(self) -> list[tuple[int, ...]]:
        """The replicas of each process: contiguous ranges, sizes differing by at most 1."""
        n, k = self.num_replicas, self.num_processes
        bounds = [i * n // k for i in range(k + 1)]
        return [tuple(range(bounds[j], bounds[j + 1])) for j in range(k)]

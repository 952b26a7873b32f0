"""Hardware and model catalogs: plain, frozen data types.

The catalogs are data, not code: the built-in entries live in YAML files read by
`headway.resources.catalog`, which also merges user files. `core` only defines the
shapes and the arithmetic that derives from them (parameter counts, KV bytes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

_T = TypeVar("_T")


class Dtype(StrEnum):
    """Numeric formats for weights, activations and the KV cache."""

    BF16 = "bf16"
    FP8 = "fp8"
    FP4 = "fp4"
    INT4 = "int4"

    @property
    def bytes_per_element(self) -> float:
        return _BYTES_PER_ELEMENT[self]


_BYTES_PER_ELEMENT = {Dtype.BF16: 2.0, Dtype.FP8: 1.0, Dtype.FP4: 0.5, Dtype.INT4: 0.5}


@dataclass(frozen=True)
class GpuSpec:
    """One accelerator's datasheet figures (dense tensor-core throughput)."""

    name: str
    hbm_bytes: float
    hbm_bandwidth_bytes_per_s: float
    flops_per_s: dict[Dtype, float]
    interconnect_bandwidth_bytes_per_s: float
    board_power_w: float
    aliases: tuple[str, ...] = ()
    # Cost-model `Efficiency` fields fitted for this device, (name, value) pairs, which
    # replace the defaults for engines on it (e.g. a CPU profile fitted to vLLM-CPU).
    efficiency_overrides: tuple[tuple[str, float], ...] = ()

    def peak_flops_per_s(self, dtype: Dtype) -> float:
        """Peak dense throughput for `dtype`, falling back to the widest format the GPU has.

        A GPU without FP4 tensor cores runs FP4/INT4 weights as weight-only
        quantisation (dequantise to BF16 and multiply there).
        """
        if dtype in self.flops_per_s:
            return self.flops_per_s[dtype]
        if dtype in (Dtype.FP4, Dtype.INT4) and Dtype.FP4 in self.flops_per_s:
            return self.flops_per_s[Dtype.FP4]
        return self.flops_per_s[Dtype.BF16]


@dataclass(frozen=True)
class MoeSpec:
    """Mixture-of-experts layout of the feed-forward blocks."""

    num_experts: int
    num_experts_per_token: int
    expert_intermediate_size: int
    num_shared_experts: int = 0
    num_dense_layers: int = 0  # leading layers with a dense FFN instead of experts
    dense_intermediate_size: int = 0


@dataclass(frozen=True)
class MlaSpec:
    """Multi-head latent attention (DeepSeek-V2/V3): a compressed, shared KV latent."""

    kv_lora_rank: int
    qk_rope_head_dim: int
    qk_nope_head_dim: int
    v_head_dim: int
    q_lora_rank: int = 0


@dataclass(frozen=True)
class ModelSpec:
    """A transformer's shape: enough to count parameters, FLOPs and KV bytes."""

    name: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_model_len: int
    moe: MoeSpec | None = None
    mla: MlaSpec | None = None
    tie_word_embeddings: bool = False
    aliases: tuple[str, ...] = ()
    hf_id: str = ""

    # -- parameter counts -------------------------------------------------------
    @property
    def attention_params_per_layer(self) -> int:
        h = self.hidden_size
        if self.mla is not None:
            m = self.mla
            qk_head = m.qk_nope_head_dim + m.qk_rope_head_dim
            if m.q_lora_rank:
                q = h * m.q_lora_rank + m.q_lora_rank * self.num_attention_heads * qk_head
            else:
                q = h * self.num_attention_heads * qk_head
            kv_down = h * (m.kv_lora_rank + m.qk_rope_head_dim)
            kv_up = m.kv_lora_rank * self.num_attention_heads * (m.qk_nope_head_dim + m.v_head_dim)
            out = self.num_attention_heads * m.v_head_dim * h
            return q + kv_down + kv_up + out
        q = h * self.num_attention_heads * self.head_dim
        kv = 2 * h * self.num_kv_heads * self.head_dim
        out = self.num_attention_heads * self.head_dim * h
        return q + kv + out

    @property
    def dense_ffn_params(self) -> int:
        """One gated (SwiGLU) FFN of `intermediate_size`: gate, up and down projections."""
        return 3 * self.hidden_size * self.intermediate_size

    @property
    def expert_params(self) -> int:
        assert self.moe is not None
        return 3 * self.hidden_size * self.moe.expert_intermediate_size

    @property
    def embedding_params(self) -> int:
        n = self.vocab_size * self.hidden_size
        return n if self.tie_word_embeddings else 2 * n

    def _ffn_params(self, experts_per_moe_layer: float) -> float:
        if self.moe is None:
            return float(self.num_layers * self.dense_ffn_params)
        m = self.moe
        dense_size = m.dense_intermediate_size or self.intermediate_size
        dense = m.num_dense_layers * 3 * self.hidden_size * dense_size
        moe_layers = self.num_layers - m.num_dense_layers
        per_layer = (experts_per_moe_layer + m.num_shared_experts) * self.expert_params
        router = self.hidden_size * m.num_experts
        return dense + moe_layers * (per_layer + router)

    @property
    def total_params(self) -> float:
        experts = float(self.moe.num_experts) if self.moe else 0.0
        return (
            self.num_layers * self.attention_params_per_layer
            + self._ffn_params(experts)
            + self.embedding_params
        )

    @property
    def active_params_per_token(self) -> float:
        """Parameters one token multiplies through (the LM head, not the input embedding)."""
        experts = float(self.moe.num_experts_per_token) if self.moe else 0.0
        return (
            self.num_layers * self.attention_params_per_layer
            + self._ffn_params(experts)
            + self.vocab_size * self.hidden_size
        )

    def weight_params_touched(self, num_tokens: int) -> float:
        """Parameters read from memory in one step that processes `num_tokens` tokens.

        Dense models read every weight once per step. An MoE layer reads only the
        experts some token was routed to: with uniform routing, the expected number of
        distinct experts among E when `num_tokens` tokens each pick k is
        E * (1 - (1 - k/E) ** num_tokens).
        """
        m = self.moe
        if m is None:
            touched = 0.0
        elif num_tokens <= 0:
            touched = float(m.num_experts)
        else:
            touched = m.num_experts * (
                1.0 - (1.0 - m.num_experts_per_token / m.num_experts) ** num_tokens
            )
        # Input-embedding rows are gathered, not streamed; the LM head is read in full
        # (also when it is tied to the embedding, so not `total - embedding`).
        return (
            self.num_layers * self.attention_params_per_layer
            + self._ffn_params(touched)
            + self.vocab_size * self.hidden_size
        )

    # -- attention --------------------------------------------------------------
    def kv_bytes_per_token(self, kv_dtype: Dtype) -> float:
        """KV-cache bytes one token occupies across all layers (whole model, TP=1)."""
        b = kv_dtype.bytes_per_element
        if self.mla is not None:
            return self.num_layers * (self.mla.kv_lora_rank + self.mla.qk_rope_head_dim) * b
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * b

    def kv_bytes_per_token_per_gpu(self, kv_dtype: Dtype, tp: int) -> float:
        """KV bytes per token held on each of `tp` GPUs.

        GQA heads shard across ranks (replicated once tp exceeds the KV heads); the MLA
        latent is shared by all heads, so each rank keeps all of it.
        """
        full = self.kv_bytes_per_token(kv_dtype)
        if self.mla is not None:
            return full
        shards = min(tp, self.num_kv_heads)
        return full / shards

    @property
    def attention_flops_per_query_key(self) -> float:
        """FLOPs for one query token against one cached key: QK^T plus AV, all layers."""
        if self.mla is not None:
            m = self.mla
            qk = m.qk_nope_head_dim + m.qk_rope_head_dim
            return 2.0 * self.num_layers * self.num_attention_heads * (qk + m.v_head_dim)
        return 4.0 * self.num_layers * self.num_attention_heads * self.head_dim


@dataclass(frozen=True)
class Precision:
    """How a deployment stores weights and the KV cache."""

    weights: Dtype = Dtype.BF16
    kv_cache: Dtype = Dtype.BF16

    @property
    def name(self) -> str:
        if self.kv_cache == Dtype.BF16:
            return self.weights.value
        return f"{self.weights.value}-kv{self.kv_cache.value}"


# Named presets accepted by `--precision`.
PRECISIONS: dict[str, Precision] = {
    "bf16": Precision(Dtype.BF16, Dtype.BF16),
    "fp8": Precision(Dtype.FP8, Dtype.FP8),
    "fp8-kvbf16": Precision(Dtype.FP8, Dtype.BF16),
    "fp4": Precision(Dtype.FP4, Dtype.FP8),
    "fp4-kvbf16": Precision(Dtype.FP4, Dtype.BF16),
    "int4": Precision(Dtype.INT4, Dtype.BF16),
    "int4-kvfp8": Precision(Dtype.INT4, Dtype.FP8),
}


class CatalogError(ValueError):
    """An unknown name or an invalid catalog entry; the message names the field."""


@dataclass(frozen=True)
class Catalog:
    """GPUs and models by name (and alias), case-insensitively."""

    gpus: dict[str, GpuSpec] = field(default_factory=dict)
    models: dict[str, ModelSpec] = field(default_factory=dict)

    def gpu(self, name: str) -> GpuSpec:
        return _lookup(self.gpus, name, "gpu")

    def model(self, name: str) -> ModelSpec:
        return _lookup(self.models, name, "model")

    def merged(self, other: Catalog) -> Catalog:
        """A new catalog with `other`'s entries added (replacing same-named ones)."""
        return Catalog({**self.gpus, **other.gpus}, {**self.models, **other.models})


def precision(name: str) -> Precision:
    """The named precision preset; raises `CatalogError` listing the known names."""
    key = name.strip().lower()
    if key not in PRECISIONS:
        raise CatalogError(f"precision: unknown {name!r}; known: {', '.join(PRECISIONS)}")
    return PRECISIONS[key]


def _lookup(table: dict[str, _T], name: str, kind: str) -> _T:
    key = name.strip().lower()
    for entry_name, entry in table.items():
        aliases: tuple[str, ...] = getattr(entry, "aliases", ())
        if key == entry_name.lower() or key in (a.lower() for a in aliases):
            return entry
    known = ", ".join(sorted(table))
    raise CatalogError(f"{kind}: unknown {name!r}; known: {known}")

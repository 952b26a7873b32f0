"""Reads GPU and model catalogs from YAML into `headway.core.catalog` types.

The built-in catalog ships as `data/catalog.yaml`; users add entries (or replace
built-in ones) with files of the same shape. Every validation error names the field,
e.g. ``gpus.h100.hbm_gib: must be a positive number``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

import yaml

from headway.core.catalog import (
    Catalog,
    CatalogError,
    Dtype,
    GpuSpec,
    MlaSpec,
    ModelSpec,
    MoeSpec,
)
from headway.core.costmodel import Efficiency

_GIB = 1024**3


def _num(entry: Mapping[str, Any], key: str, where: str, *, integer: bool = False) -> Any:
    if key not in entry:
        raise CatalogError(f"{where}.{key}: missing")
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise CatalogError(f"{where}.{key}: must be a positive number, got {value!r}")
    if integer:
        if int(value) != value:
            raise CatalogError(f"{where}.{key}: must be an integer, got {value!r}")
        return int(value)
    return float(value)


def _aliases(entry: Mapping[str, Any], where: str) -> tuple[str, ...]:
    aliases = entry.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise CatalogError(f"{where}.aliases: must be a list of strings")
    return tuple(aliases)


def _check_keys(entry: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    unknown = sorted(set(entry) - set(allowed))
    if unknown:
        raise CatalogError(f"{where}.{unknown[0]}: unknown field")


_GPU_KEYS = (
    "aliases",
    "hbm_gib",
    "hbm_bandwidth_tb_s",
    "tflops",
    "interconnect_gb_s",
    "board_power_w",
    "efficiency",
)
# Efficiency fields a device may fit; gpu_memory_utilization is vLLM's flag, not the device's.
_DEVICE_EFFICIENCY_KEYS = tuple(
    f.name for f in dataclasses.fields(Efficiency) if f.name != "gpu_memory_utilization"
)


def _efficiency(entry: Mapping[str, Any], where: str) -> tuple[tuple[str, float], ...]:
    eff = entry.get("efficiency", {})
    if not isinstance(eff, Mapping):
        raise CatalogError(f"{where}.efficiency: must map Efficiency fields to numbers")
    _check_keys(eff, _DEVICE_EFFICIENCY_KEYS, f"{where}.efficiency")
    out = []
    for key in sorted(eff):
        value = eff[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise CatalogError(f"{where}.efficiency.{key}: must be a number >= 0, got {value!r}")
        out.append((str(key), float(value)))
    return tuple(out)


def parse_gpu(name: str, entry: Any) -> GpuSpec:
    where = f"gpus.{name}"
    if not isinstance(entry, Mapping):
        raise CatalogError(f"{where}: must be a mapping")
    _check_keys(entry, _GPU_KEYS, where)
    tflops = entry.get("tflops")
    if not isinstance(tflops, Mapping) or "bf16" not in (str(f).lower() for f in tflops):
        raise CatalogError(f"{where}.tflops: must map formats to TFLOPS and include bf16")
    flops: dict[Dtype, float] = {}
    for fmt in tflops:
        try:
            dtype = Dtype(str(fmt).lower())
        except ValueError:
            known = ", ".join(d.value for d in Dtype)
            raise CatalogError(f"{where}.tflops.{fmt}: unknown format; known: {known}") from None
        flops[dtype] = _num(tflops, fmt, f"{where}.tflops") * 1e12
    return GpuSpec(
        name=name,
        hbm_bytes=_num(entry, "hbm_gib", where) * _GIB,
        hbm_bandwidth_bytes_per_s=_num(entry, "hbm_bandwidth_tb_s", where) * 1e12,
        flops_per_s=flops,
        interconnect_bandwidth_bytes_per_s=_num(entry, "interconnect_gb_s", where) * 1e9,
        board_power_w=_num(entry, "board_power_w", where),
        aliases=_aliases(entry, where),
        efficiency_overrides=_efficiency(entry, where),
    )


_MODEL_INT_KEYS = (
    "num_layers",
    "hidden_size",
    "num_attention_heads",
    "num_kv_heads",
    "head_dim",
    "intermediate_size",
    "vocab_size",
    "max_model_len",
)
_MOE_KEYS = (
    "num_experts",
    "num_experts_per_token",
    "expert_intermediate_size",
    "num_shared_experts",
    "num_dense_layers",
    "dense_intermediate_size",
)
_MLA_KEYS = ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim", "q_lora_rank")
_OPTIONAL_ZERO = {
    "num_shared_experts",
    "num_dense_layers",
    "dense_intermediate_size",
    "q_lora_rank",
}


def _int_fields(entry: Mapping[str, Any], keys: Iterable[str], where: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for key in keys:
        if key in _OPTIONAL_ZERO and entry.get(key, 0) == 0:
            out[key] = 0
            continue
        out[key] = _num(entry, key, where, integer=True)
    return out


def parse_model(name: str, entry: Any) -> ModelSpec:
    where = f"models.{name}"
    if not isinstance(entry, Mapping):
        raise CatalogError(f"{where}: must be a mapping")
    _check_keys(
        entry, (*_MODEL_INT_KEYS, "aliases", "hf_id", "moe", "mla", "tie_word_embeddings"), where
    )
    fields = _int_fields(entry, _MODEL_INT_KEYS, where)
    moe = mla = None
    if entry.get("moe") is not None:
        m = entry["moe"]
        if not isinstance(m, Mapping):
            raise CatalogError(f"{where}.moe: must be a mapping")
        _check_keys(m, _MOE_KEYS, f"{where}.moe")
        moe = MoeSpec(**_int_fields(m, _MOE_KEYS, f"{where}.moe"))
        if moe.num_experts_per_token > moe.num_experts:
            raise CatalogError(f"{where}.moe.num_experts_per_token: exceeds num_experts")
    if entry.get("mla") is not None:
        m = entry["mla"]
        if not isinstance(m, Mapping):
            raise CatalogError(f"{where}.mla: must be a mapping")
        _check_keys(m, _MLA_KEYS, f"{where}.mla")
        mla = MlaSpec(**_int_fields(m, _MLA_KEYS, f"{where}.mla"))
    if fields["num_attention_heads"] % fields["num_kv_heads"] and mla is None:
        raise CatalogError(f"{where}.num_kv_heads: must divide num_attention_heads")
    return ModelSpec(
        name=name,
        moe=moe,
        mla=mla,
        aliases=_aliases(entry, where),
        hf_id=str(entry.get("hf_id", "")),
        tie_word_embeddings=bool(entry.get("tie_word_embeddings", False)),
        **fields,
    )


def parse_catalog(doc: Any, source: str = "<catalog>") -> Catalog:
    """Build a `Catalog` from a parsed YAML document."""
    if doc is None:
        return Catalog()
    if not isinstance(doc, Mapping):
        raise CatalogError(f"{source}: top level must be a mapping with 'gpus' and/or 'models'")
    _check_keys(doc, ("gpus", "models"), source)
    for section in ("gpus", "models"):
        if not isinstance(doc.get(section) or {}, Mapping):
            raise CatalogError(f"{section}: must be a mapping of names to entries")
    gpus = {name: parse_gpu(name, e) for name, e in (doc.get("gpus") or {}).items()}
    models = {name: parse_model(name, e) for name, e in (doc.get("models") or {}).items()}
    return Catalog(gpus, models)


def load_catalog_file(path: str | Path) -> Catalog:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise CatalogError(f"catalog file {p}: {exc.strerror}") from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogError(f"catalog file {p}: not valid YAML: {exc}") from exc
    return parse_catalog(doc, str(p))


def builtin_catalog() -> Catalog:
    text = importlib_resources.files("headway.resources").joinpath("data/catalog.yaml").read_text()
    return parse_catalog(yaml.safe_load(text), "built-in catalog")


def load_catalog(extra_files: Iterable[str | Path] = ()) -> Catalog:
    """The built-in catalog with each user file's entries merged over it, in order."""
    catalog = builtin_catalog()
    for f in extra_files:
        catalog = catalog.merged(load_catalog_file(f))
    return catalog

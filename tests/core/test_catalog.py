"""GPU and model catalogs: the built-in YAML, user files merged over it, and errors that
name the offending field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from headway.core.catalog import Catalog, CatalogError, Dtype, Precision, precision
from headway.resources.catalog import (
    builtin_catalog,
    load_catalog,
    load_catalog_file,
    parse_catalog,
)

GIB = 1024**3


@pytest.fixture(scope="module")
def builtin() -> Catalog:
    return builtin_catalog()


@pytest.mark.parametrize(
    ("name", "canonical", "hbm_gib", "bw_tb_s", "bf16_tflops"),
    [
        ("h100", "h100-sxm", 79.6, 3.35, 989),
        ("H100-SXM5", "h100-sxm", 79.6, 3.35, 989),
        ("h100-sxm", "h100-sxm", 79.6, 3.35, 989),
        ("h200", "h200", 140.4, 4.8, 989),
        ("b200", "b200", 179.0, 7.7, 2250),
        ("gb200", "gb200", 184.0, 8.0, 2500),
        (" gb200-nvl72 ", "gb200", 184.0, 8.0, 2500),
    ],
    ids=["h100-alias", "h100-alias-case", "h100-name", "h200", "b200", "gb200", "gb200-alias"],
)
def test_builtin_gpus(
    builtin: Catalog, name: str, canonical: str, hbm_gib: float, bw_tb_s: float, bf16_tflops: float
) -> None:
    gpu = builtin.gpu(name)
    assert gpu.name == canonical
    assert gpu.hbm_bytes == pytest.approx(hbm_gib * GIB)
    assert gpu.hbm_bandwidth_bytes_per_s == pytest.approx(bw_tb_s * 1e12)
    assert gpu.flops_per_s[Dtype.BF16] == pytest.approx(bf16_tflops * 1e12)
    assert gpu.flops_per_s[Dtype.FP8] == pytest.approx(2 * bf16_tflops * 1e12, rel=0.01)


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("llama-3.1-8b", "llama-3.1-8b"),
        ("meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b"),
        ("meta-llama/meta-llama-3.1-8b-instruct", "llama-3.1-8b"),
        ("llama-70b", "llama-3.1-70b"),
        ("meta-llama/Llama-3.3-70B-Instruct", "llama-3.3-70b"),
        ("llama-405b", "llama-3.1-405b"),
        ("Qwen/Qwen3-32B", "qwen3-32b"),
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", "mixtral-8x7b"),
        ("deepseek-ai/DeepSeek-V3", "deepseek-v3"),
    ],
    ids=[
        "8b",
        "8b-hf",
        "8b-hf-old-name-lower",
        "70b",
        "3.3-70b",
        "405b",
        "qwen",
        "mixtral",
        "dsv3",
    ],
)
def test_builtin_models_and_aliases(builtin: Catalog, name: str, canonical: str) -> None:
    assert builtin.model(name).name == canonical


def test_builtin_model_shapes(builtin: Catalog) -> None:
    m = builtin.model("llama-3.1-8b")
    assert (m.num_layers, m.num_kv_heads, m.head_dim, m.max_model_len) == (32, 8, 128, 131072)
    assert m.hf_id == "meta-llama/Llama-3.1-8B-Instruct"
    ds = builtin.model("deepseek-v3")
    assert ds.mla is not None and ds.mla.kv_lora_rank == 512
    assert ds.moe is not None and ds.moe.num_shared_experts == 1
    assert builtin.model("mixtral-8x7b").moe.num_dense_layers == 0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("kind", "name"),
    [("gpu", "a100"), ("model", "gpt-5"), ("gpu", "llama-3.1-8b")],
    ids=["unknown-gpu", "unknown-model", "model-name-as-gpu"],
)
def test_unknown_names_list_known(builtin: Catalog, kind: str, name: str) -> None:
    with pytest.raises(CatalogError, match=rf"^{kind}: unknown '{name}'; known: .*"):
        getattr(builtin, kind)(name)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("bf16", Precision(Dtype.BF16, Dtype.BF16)),
        ("FP8", Precision(Dtype.FP8, Dtype.FP8)),
        ("fp4", Precision(Dtype.FP4, Dtype.FP8)),
        ("int4-kvfp8", Precision(Dtype.INT4, Dtype.FP8)),
    ],
    ids=["bf16", "fp8-upper", "fp4", "int4-kvfp8"],
)
def test_precision_presets(name: str, expected: Precision) -> None:
    assert precision(name) == expected


def test_unknown_precision() -> None:
    with pytest.raises(CatalogError, match="precision: unknown 'fp16'"):
        precision("fp16")


# -- user files --------------------------------------------------------------------------

USER_FILE = """
gpus:
  h100-sxm:                 # override a built-in entry by name
    aliases: [h100]
    hbm_gib: 79.6
    hbm_bandwidth_tb_s: 3.0
    tflops: {bf16: 900, fp8: 1800}
    interconnect_gb_s: 450
    board_power_w: 700
  mi300x:                   # add a new one
    aliases: [amd-mi300x]
    hbm_gib: 192
    hbm_bandwidth_tb_s: 5.3
    tflops: {BF16: 1307, fp8: 2615}
    interconnect_gb_s: 448
    board_power_w: 750
models:
  tiny-moe:
    aliases: [org/Tiny-MoE]
    num_layers: 2
    hidden_size: 64
    num_attention_heads: 4
    num_kv_heads: 2
    head_dim: 16
    intermediate_size: 128
    vocab_size: 1000
    max_model_len: 2048
    tie_word_embeddings: true
    moe:
      num_experts: 4
      num_experts_per_token: 2
      expert_intermediate_size: 32
"""


def test_user_file_merges_and_overrides(tmp_path: Path, builtin: Catalog) -> None:
    f = tmp_path / "mine.yaml"
    f.write_text(USER_FILE)
    cat = load_catalog([f])
    assert cat.gpu("h100").hbm_bandwidth_bytes_per_s == pytest.approx(3.0e12)
    assert cat.gpu("h100-sxm").flops_per_s[Dtype.BF16] == pytest.approx(900e12)
    assert cat.gpu("amd-mi300x").flops_per_s[Dtype.BF16] == pytest.approx(1307e12)
    assert cat.gpu("h200") == builtin.gpu("h200")
    tiny = cat.model("org/tiny-moe")
    assert tiny.tie_word_embeddings
    assert tiny.moe is not None and tiny.moe.num_experts == 4
    assert cat.model("llama-3.1-8b") == builtin.model("llama-3.1-8b")
    # The built-in catalog itself is untouched.
    assert builtin_catalog().gpu("h100").hbm_bandwidth_bytes_per_s == pytest.approx(3.35e12)
    with pytest.raises(CatalogError):
        builtin.gpu("mi300x")


def test_later_files_win(tmp_path: Path) -> None:
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text(USER_FILE)
    doc = yaml.safe_load(USER_FILE)
    doc["gpus"]["mi300x"]["board_power_w"] = 1000
    del doc["models"]
    second.write_text(yaml.safe_dump(doc))
    assert load_catalog([first, second]).gpu("mi300x").board_power_w == 1000
    assert load_catalog([second, first]).gpu("mi300x").board_power_w == 750


@pytest.mark.parametrize("text", ["", "# nothing\n", "gpus: {}\nmodels: {}\n", "gpus:\n"],
                         ids=["empty", "comment", "empty-sections", "null-section"])  # fmt: skip
def test_empty_user_files_change_nothing(tmp_path: Path, builtin: Catalog, text: str) -> None:
    f = tmp_path / "empty.yaml"
    f.write_text(text)
    assert load_catalog([f]) == builtin


# -- errors name the field ---------------------------------------------------------------

GPU_OK = {
    "hbm_gib": 80,
    "hbm_bandwidth_tb_s": 3.35,
    "tflops": {"bf16": 989},
    "interconnect_gb_s": 450,
    "board_power_w": 700,
}
MODEL_OK = {
    "num_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_kv_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
    "vocab_size": 1000,
    "max_model_len": 2048,
}
MOE_OK = {"num_experts": 4, "num_experts_per_token": 2, "expert_intermediate_size": 32}


def gpu(**changes: object) -> dict:
    entry = {**GPU_OK, **changes}
    return {"gpus": {"x": {k: v for k, v in entry.items() if v is not ...}}}


def model(**changes: object) -> dict:
    entry = {**MODEL_OK, **changes}
    return {"models": {"m": {k: v for k, v in entry.items() if v is not ...}}}


def test_the_error_table_bases_are_valid() -> None:
    cat = parse_catalog({**gpu(), **model(moe=MOE_OK)})
    assert cat.gpu("x").board_power_w == 700
    assert cat.model("m").moe is not None


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (gpu(hbm_gib=...), "gpus.x.hbm_gib: missing"),
        (gpu(hbm_bandwidth_tb_s=-1), "gpus.x.hbm_bandwidth_tb_s: must be a positive number"),
        (gpu(board_power_w=0), "gpus.x.board_power_w: must be a positive number"),
        (gpu(interconnect_gb_s="fast"), "gpus.x.interconnect_gb_s: must be a positive number"),
        (gpu(hbm_gib=True), "gpus.x.hbm_gib: must be a positive number"),
        (gpu(hbm_gb=80), "gpus.x.hbm_gb: unknown field"),
        (gpu(tflops={"bf16": 1, "fp6": 2}), "gpus.x.tflops.fp6: unknown format"),
        (gpu(tflops={"fp8": 1}), "gpus.x.tflops: must map formats to TFLOPS and include bf16"),
        (gpu(tflops=989), "gpus.x.tflops"),
        (gpu(tflops={"bf16": 1, "fp8": -2}), "gpus.x.tflops.fp8: must be a positive number"),
        (gpu(aliases="h1"), "gpus.x.aliases: must be a list of strings"),
        (gpu(aliases=["h1", 2]), "gpus.x.aliases: must be a list of strings"),
        ({"gpus": {"x": [1, 2]}}, "gpus.x: must be a mapping"),
        ({"gpus": ["x"]}, "gpus: must be a mapping"),
        ({"models": 3}, "models: must be a mapping"),
        (model(num_layers=...), "models.m.num_layers: missing"),
        (model(num_layers=2.5), "models.m.num_layers: must be an integer"),
        (model(vocab_size=-5), "models.m.vocab_size: must be a positive number"),
        (model(layers=2), "models.m.layers: unknown field"),
        (model(aliases={"a": 1}), "models.m.aliases: must be a list of strings"),
        (model(num_kv_heads=3), "models.m.num_kv_heads: must divide num_attention_heads"),
        (model(moe=[1]), "models.m.moe: must be a mapping"),
        (model(moe={**MOE_OK, "experts": 3}), "models.m.moe.experts: unknown field"),
        (
            model(moe={k: v for k, v in MOE_OK.items() if k != "num_experts"}),
            "models.m.moe.num_experts: missing",
        ),
        (
            model(moe={**MOE_OK, "num_experts_per_token": 5}),
            "models.m.moe.num_experts_per_token: exceeds num_experts",
        ),
        (
            model(moe={**MOE_OK, "num_shared_experts": -1}),
            "models.m.moe.num_shared_experts: must be a positive number",
        ),
        (model(mla={"kv_lora_rank": 512}), "models.m.mla.qk_rope_head_dim: missing"),
        (model(mla={"rank": 1}), "models.m.mla.rank: unknown field"),
        ({"gpu": {}}, "<catalog>.gpu: unknown field"),
        ([1, 2], "<catalog>: top level must be a mapping"),
    ],
    ids=[
        "gpu-missing-field",
        "gpu-negative",
        "gpu-zero",
        "gpu-string-number",
        "gpu-bool-number",
        "gpu-unknown-field",
        "gpu-unknown-dtype",
        "gpu-tflops-without-bf16",
        "gpu-tflops-not-mapping",
        "gpu-tflops-negative",
        "gpu-aliases-string",
        "gpu-aliases-non-string",
        "gpu-entry-not-mapping",
        "gpus-is-a-list",
        "models-is-a-number",
        "model-missing-field",
        "model-fractional-int",
        "model-negative",
        "model-unknown-field",
        "model-aliases-mapping",
        "model-kv-heads-not-divisor",
        "moe-not-mapping",
        "moe-unknown-field",
        "moe-missing-field",
        "moe-top-k-too-big",
        "moe-negative-optional",
        "mla-missing-field",
        "mla-unknown-field",
        "top-level-unknown-key",
        "top-level-list",
    ],
)
def test_bad_catalogs_name_the_field(doc: object, message: str) -> None:
    with pytest.raises(CatalogError) as err:
        parse_catalog(doc)
    assert str(err.value).startswith(message), str(err.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gpus: {x: [unclosed\n", "not valid YAML"),
        (
            yaml.safe_dump({"gpus": {"x": {**GPU_OK, "hbm_gib": -1}}}),
            "gpus.x.hbm_gib: must be a positive number",
        ),
        ("- just\n- a list\n", "top level must be a mapping"),
    ],
    ids=["invalid-yaml", "bad-field", "list"],
)
def test_bad_files_name_the_file_or_field(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(CatalogError, match=message):
        load_catalog([f])


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"catalog file .*nope\.yaml"):
        load_catalog_file(tmp_path / "nope.yaml")

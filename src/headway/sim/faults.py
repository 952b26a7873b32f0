"""Per-replica fault injection: error rate, crash after N requests, hang, slow-down,
and streams dropped after K tokens. Settable by flags at start and at run time through
``POST /admin/faults`` (JSON with the same field names)."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields, replace
from typing import Any


class FaultConfigError(ValueError):
    """An invalid fault setting; the message names the field."""


@dataclass(frozen=True)
class FaultConfig:
    """Faults a replica injects. All off by default."""

    error_rate: float = 0.0  # share of completion requests answered 500
    crash_after_requests: int | None = None  # the replica dies after accepting N requests
    hang: bool = False  # accept completion requests, never answer
    slowdown: float = 1.0  # multiply every step's duration
    drop_stream_after_tokens: int | None = None  # cut the connection after K tokens

    def __post_init__(self) -> None:
        if not 0.0 <= self.error_rate <= 1.0:
            raise FaultConfigError(f"error_rate: must be in [0, 1], got {self.error_rate}")
        if self.crash_after_requests is not None and self.crash_after_requests < 0:
            raise FaultConfigError("crash_after_requests: must be >= 0")
        if self.slowdown <= 0:
            raise FaultConfigError(f"slowdown: must be > 0, got {self.slowdown}")
        if self.drop_stream_after_tokens is not None and self.drop_stream_after_tokens < 0:
            raise FaultConfigError("drop_stream_after_tokens: must be >= 0")

    def updated(self, changes: dict[str, Any]) -> FaultConfig:
        """A copy with `changes` applied; unknown or ill-typed fields are errors."""
        known = {f.name: f for f in fields(self)}
        clean: dict[str, Any] = {}
        for key, value in changes.items():
            if key not in known:
                raise FaultConfigError(f"{key}: unknown fault; known: {', '.join(known)}")
            if key == "hang":
                if not isinstance(value, bool):
                    raise FaultConfigError("hang: must be a boolean")
            elif value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise FaultConfigError(f"{key}: must be a number or null")
            elif key in ("crash_after_requests", "drop_stream_after_tokens") and value is not None:
                if int(value) != value:
                    raise FaultConfigError(f"{key}: must be an integer")
                value = int(value)
            elif key in ("error_rate", "slowdown"):
                if value is None:
                    raise FaultConfigError(f"{key}: must be a number")
                value = float(value)
            clean[key] = value
        return replace(self, **clean)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class FaultInjector:
    """Decides, reproducibly from a seed, which requests fail."""

    def __init__(self, config: FaultConfig, seed: int) -> None:
        self.config = config
        self._rng = random.Random(seed)
        self.num_accepted = 0

    def should_error(self) -> bool:
        return self.config.error_rate > 0 and self._rng.random() < self.config.error_rate

    def count_request(self) -> bool:
        """Count an accepted request; True if the replica must crash now."""
        self.num_accepted += 1
        limit = self.config.crash_after_requests
        return limit is not None and self.num_accepted > limit

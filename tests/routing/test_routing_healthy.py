"""healthy filter: drops unhealthy or ejected endpoints; fails open only when asked."""

from __future__ import annotations

import pytest
from routing_helpers import ctx, snap

from headway.routing import ConfigError, RequestScratch
from headway.routing.plugins.healthy import HealthyFilter, HealthyParams

H, SICK, EJECTED, BOTH = (True, False), (False, False), (True, True), (False, True)


@pytest.mark.parametrize(
    ("states", "fail_open", "expected"),
    [
        ({"a": H, "b": H}, False, "ab"),
        ({"a": H, "b": SICK}, False, "a"),
        ({"a": EJECTED, "b": H}, False, "b"),
        ({"a": BOTH, "b": H, "c": SICK}, False, "b"),
        ({"a": SICK, "b": EJECTED}, False, ""),
        ({"a": SICK, "b": EJECTED}, True, "ab"),
        ({"a": SICK, "b": H}, True, "b"),
        ({}, True, ""),
    ],
    ids=[
        "all-healthy",
        "drops-unhealthy",
        "drops-ejected",
        "drops-both-kinds",
        "none-left-fails-closed",
        "none-left-fails-open",
        "fail-open-only-when-all-out",
        "empty",
    ],
)
def test_healthy(states: dict[str, tuple[bool, bool]], fail_open: bool, expected: str) -> None:
    eps = tuple(snap(i, is_healthy=h, is_ejected=e) for i, (h, e) in states.items())
    kept = HealthyFilter(HealthyParams(fail_open)).filter(ctx(), eps, RequestScratch(0.0))
    assert "".join(e.endpoint_id for e in kept) == expected


def test_params_from_config() -> None:
    from headway.routing.config import params_from_mapping

    assert params_from_mapping(HealthyParams, {"fail_open": True}, "p") == HealthyParams(True)
    with pytest.raises(ConfigError, match=r"^p\.fail_open: must be true or false"):
        params_from_mapping(HealthyParams, {"fail_open": "yes"}, "p")

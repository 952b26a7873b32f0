"""A cluster run as `headway bench` results (results.json, schema `headway.bench/1`),
so `headway bench compare` and the bench reports work across live and simulated runs.

The simulated client has no scheduling lag (sends happen exactly at their virtual
time), so the `client` section reports zeros and `is_schedule_kept: true`. Engine-side
figures a live run reads from `/metrics` (prefix-cache hit rate, preemptions, busy
time) are added under `engines`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from headway.cluster.simulation import ClusterRun
from headway.core.serving_metrics import CostInputs, GoodputSlo, request_rows, summarize

SCHEMA = "headway.bench/1"


def point(
    run: ClusterRun,
    load: Mapping[str, Any],
    *,
    goodput: GoodputSlo | None = None,
    cost: CostInputs | None = None,
) -> dict[str, Any]:
    """One `points` entry for `run` at load level `load`."""
    records = sorted(run.records, key=lambda r: r.sent_at)
    started_at = records[0].sent_at if records else 0.0
    busy_s = sum(r.busy_s for r in run.replicas)
    return {
        "load": dict(load),
        "summary": summarize(records, run.duration_s, goodput=goodput, cost=cost),
        "client": {
            "scheduling_lag_p50_ms": 0.0,
            "scheduling_lag_p99_ms": 0.0,
            "num_processes": 1,
            "is_schedule_kept": True,
            "is_partial": False,
        },
        "engines": {
            "num_replicas": len(run.replicas),
            "prefix_hit_rate": run.prefix_hit_rate,
            "num_preemptions": sum(r.num_preemptions for r in run.replicas),
            "num_steps": sum(r.num_steps for r in run.replicas),
            "mean_busy_fraction": (
                busy_s / (len(run.replicas) * run.duration_s) if run.duration_s > 0 else 0.0
            ),
            "decisions": dict(run.decisions),
            # The gateway's admission control (429s are also in summary.failures).
            "admission": {
                "rejections": dict(run.rejections),
                "max_queue_depth": run.max_queue_depth,
            },
            # P/D pools: prompts whose KV crossed a link, mean prefill end -> decode.
            "kv_transfers": {
                "num_transfers": run.num_kv_transfers,
                "mean_transfer_ms": 1000.0 * run.mean_kv_transfer_s,
            },
        },
        "requests": request_rows(records, started_at),
    }


def document(
    metadata: Mapping[str, Any], arms: list[tuple[str, list[dict[str, Any]]]]
) -> dict[str, Any]:
    """A results document: one arm per (label, points), e.g. one per routing profile."""
    return {
        "schema": SCHEMA,
        "kind": "run" if all(len(points) == 1 for _, points in arms) else "sweep",
        "metadata": dict(metadata),
        "arms": [
            {
                "label": label,
                "base_url": f"cluster://{label}",
                "target": {"versions": {"engine": "headway cluster simulation"}},
                "points": points,
            }
            for label, points in arms
        ],
    }

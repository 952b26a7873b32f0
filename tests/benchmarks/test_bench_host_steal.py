"""`benchmarks/host_steal.py`: the hypervisor's stolen CPU time over a window."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from host_steal import StealSampler, read_steal_ticks  # noqa: E402

# A Linux 6.x /proc/stat head, as the kernel writes it (fields: user nice system idle
# iowait irq softirq steal guest guest_nice).
PROC_STAT = """cpu  13462 0 4087 34368 210 0 61 14 0 0
cpu0 2900 0 994 22110 57 0 10 6 0 0
cpu1 10562 0 3093 12257 153 0 51 8 0 0
intr 1 2 3
"""


def test_read_steal_ticks_takes_the_all_cpu_line() -> None:
    assert read_steal_ticks(PROC_STAT) == 14
    assert read_steal_ticks("cpu  1 2 3 4\n") == 0  # an old kernel: no steal column
    assert read_steal_ticks("") == 0


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="no /proc/stat here")
def test_read_steal_ticks_reads_this_kernel() -> None:
    text = Path("/proc/stat").read_text()
    assert read_steal_ticks(text) >= 0
    assert int(text.split()[1]) >= 0  # the format the parser assumes: "cpu" then ticks


def test_share_interpolates_between_samples() -> None:
    hz = os.sysconf("SC_CLK_TCK")
    clock = iter([0.0, 1.0, 2.0])
    ticks = iter([0, 0, 2 * hz])  # 2 core-s stolen between t=1 and t=2
    sampler = StealSampler(
        read=lambda: f"cpu  1 0 1 1 0 0 0 {next(ticks)} 0 0\n", clock=lambda: next(clock)
    )
    for _ in range(3):
        sampler.sample()
    assert sampler.core_s(0.0, 1.0) == 0.0
    assert sampler.core_s(1.0, 2.0) == pytest.approx(2.0)
    assert sampler.core_s(1.5, 2.0) == pytest.approx(1.0)  # linear within a sample gap
    assert sampler.core_s(-5.0, 9.0) == pytest.approx(2.0)  # clamped to the samples
    assert sampler.share(1.0, 2.0) == pytest.approx(2.0 / sampler.num_cpus)
    assert sampler.share(2.0, 2.0) == 0.0


def test_sampler_thread_samples_while_in_use() -> None:
    with StealSampler(interval_s=0.01) as sampler:
        time.sleep(0.1)
    assert len(sampler.times_s) >= 3
    assert sampler.times_s == sorted(sampler.times_s)
    assert sampler.steal_core_s == sorted(sampler.steal_core_s)  # a counter never drops

"""The hypervisor's stolen CPU time, sampled while a benchmark runs.

On a virtual machine the kernel counts in `/proc/stat` (the `steal` column of the
`cpu` line) the time its virtual CPUs wanted to run while the host ran something else.
A benchmark whose latency tail moves from run to run can tell with it whether its slow
calls coincide with the host taking the CPUs away (nothing the code under test can
change) or not.

`StealSampler` reads the counter on a thread every `interval_s` (a read costs ~20 us)
and answers, for any window of the run, the stolen core-seconds and the share of the
machine's CPU time they were. On a machine without the column (bare metal, old
kernels) every figure is 0.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

PROC_STAT = Path("/proc/stat")
STEAL_FIELD = 8  # "cpu user nice system idle iowait irq softirq steal guest guest_nice"


def read_steal_ticks(text: str) -> int:
    """The `steal` ticks of the all-CPU line of a /proc/stat text (0 when absent)."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            return int(fields[STEAL_FIELD]) if len(fields) > STEAL_FIELD else 0
    return 0


class StealSampler:
    """Samples the host's stolen CPU time on a thread while in use (`with`)."""

    def __init__(
        self,
        interval_s: float = 0.05,
        read: Callable[[], str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = interval_s
        self._read = read or self._read_proc_stat
        self._clock = clock
        self._ticks_per_s = float(os.sysconf("SC_CLK_TCK"))
        self.num_cpus = os.cpu_count() or 1
        self.times_s: list[float] = []  # monotonic clock
        self.steal_core_s: list[float] = []  # cumulative, at each time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _read_proc_stat() -> str:
        try:
            return PROC_STAT.read_text()
        except OSError:
            return ""

    def sample(self) -> None:
        """Take one sample now."""
        self.times_s.append(self._clock())
        self.steal_core_s.append(read_steal_ticks(self._read()) / self._ticks_per_s)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> StealSampler:
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="steal-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def _at(self, t_s: float) -> float:
        """Cumulative stolen core-seconds at `t_s`, linear between samples."""
        ts, vs = self.times_s, self.steal_core_s
        if not ts:
            return 0.0
        i = bisect.bisect_right(ts, t_s)
        if i == 0:
            return vs[0]
        if i == len(ts):
            return vs[-1]
        span = ts[i] - ts[i - 1]
        frac = (t_s - ts[i - 1]) / span if span > 0 else 1.0
        return vs[i - 1] + frac * (vs[i] - vs[i - 1])

    def core_s(self, start_s: float, end_s: float) -> float:
        """Stolen core-seconds between two monotonic times."""
        return max(0.0, self._at(end_s) - self._at(start_s))

    def share(self, start_s: float, end_s: float) -> float:
        """The share of the machine's CPU time stolen between two monotonic times."""
        wall_s = end_s - start_s
        if wall_s <= 0:
            return 0.0
        return self.core_s(start_s, end_s) / (wall_s * self.num_cpus)

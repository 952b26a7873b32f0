"""Opt-in event trace of the simulator's event loop: what delayed a step's writes.

With `HEADWAY_SIM_TRACE=path` set, the engine loops and the request handlers record
(perf_counter, thread CPU time, code, replica, a, b) tuples in memory, written to
`path.<pid>` as JSON lines when the process exits (`headway sim` exits cleanly on
SIGTERM). Off (the default), each trace point is one global read. Spans, by their
opening and closing codes: prepare `p0`/`p1` (hashing admitted prompts), compute
`c0`/`c1` (admission, `Engine.step`, rendering), writes `w0`/`w1` (`w0` carries the
slot's start and the step's end, `w1` the number of writes and the step's duration),
settle `s0`/`s1`, GC `g0`/`g1`, request parsing `h0`/`h1`, stream open `o0`/`o1`, stream
end `e0`/`e1`; single events: `a` (the alarm timer's signal handled) and `q` (a
handler wrote queued chunks).

    python -m headway.sim.trace TRACE.pid [--start-s 4] [--end-s 9.5] [--threshold 0.05]

reports the token lag (|write - step end| over the step) as the trace saw it and, for
the steps with a token past the threshold, what the loop was doing from the slot's
start to the late wake-up (by the span open at each moment; "untraced" is the loop's
own machinery, aiohttp, the kernel, or the process not running: see the CPU share).
It also counts the loop's stalls: stretches between two consecutive trace points in
which the thread ran for more than `--stall-ms` of CPU (one callback or several
without a trace point between them: nothing else on the loop could run), by the pair
of trace points around them (`ca>cs` is `Engine.step`, `cs>c1` rendering, `g0>g1` a
collection, any pair that opens no span untraced work), with the longest listed. With
`HEADWAY_SIM_TRACE_STACKS=1` too, `path.<pid>.stacks` holds where the loop thread was
in each untraced stall (a watchdog thread's look, at most a millisecond late).
"""

from __future__ import annotations

import argparse
import atexit
import collections
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np

PATH = os.environ.get("HEADWAY_SIM_TRACE", "")
ON = bool(PATH)
EVENTS: list[tuple[float, float, str, int, float, float]] = []

_now = time.perf_counter
_cpu = time.thread_time

SPANS = {
    "p0": ("p1", "prepare"),
    "c0": ("c1", "compute"),
    "w0": ("w1", "write"),
    "s0": ("s1", "settle"),
    "g0": ("g1", "gc"),
    "h0": ("h1", "request"),
    "o0": ("o1", "open"),
    "e0": ("e1", "end"),
}
_CLOSES = {close: (open_, name) for open_, (close, name) in SPANS.items()}


def ev(code: str, index: int = -1, a: float = 0.0, b: float = 0.0) -> None:
    """Record one event now."""
    EVENTS.append((_now(), _cpu(), code, index, a, b))


# With HEADWAY_SIM_TRACE_STACKS=1 too: a watchdog thread looks every millisecond and,
# when the loop thread ran more than a millisecond of CPU without a trace point,
# records where it is (the stalls that no trace point names). It costs the loop a
# GIL hand-off per look: for finding stalls, not for measuring lag.
STACKS: list[tuple[float, float, str]] = []


def _watch(thread_id: int, period_s: float = 0.001, min_cpu_s: float = 0.001) -> None:
    clock_id = time.pthread_getcpuclockid(thread_id)
    last_n, last_cpu, recorded = -1, 0.0, False
    while True:
        time.sleep(period_s)
        n, cpu = len(EVENTS), time.clock_gettime(clock_id)
        if n != last_n:
            last_n, last_cpu, recorded = n, cpu, False
        elif cpu - last_cpu > min_cpu_s and not recorded:
            frame = sys._current_frames().get(thread_id)
            where = traceback.format_stack(frame, limit=12) if frame is not None else []
            STACKS.append((_now(), cpu - last_cpu, "".join(where)))
            recorded = True


def _dump() -> None:
    with open(f"{PATH}.{os.getpid()}", "w") as f:
        for e in EVENTS:
            f.write(json.dumps(e) + "\n")
    if STACKS:
        with open(f"{PATH}.{os.getpid()}.stacks", "w") as f:
            for t, cpu_s, where in STACKS:
                f.write(f"--- at {t:.6f}, {cpu_s * 1e3:.2f} ms of CPU untraced so far\n{where}")


if ON:
    atexit.register(_dump)
    from headway.precise_timer import AlarmTimer

    _on_alarm = AlarmTimer._on_alarm

    def _traced_on_alarm(self: AlarmTimer) -> None:
        ev("a", len(self._heap))
        _on_alarm(self)

    AlarmTimer._on_alarm = _traced_on_alarm  # type: ignore[method-assign]
    if os.environ.get("HEADWAY_SIM_TRACE_STACKS") == "1":
        threading.Thread(
            target=_watch, args=(threading.get_ident(),), name="headway-trace-watch", daemon=True
        ).start()


Event = tuple[float, float, str, int, float, float]


def report(
    events: list[Event],
    start_s: float,
    end_s: float,
    threshold: float,
    stall_cpu_s: float = 0.001,
) -> str:
    """The lag and late-step breakdown of a trace, over [start_s, end_s] after its first
    request, and the loop's stalls over `stall_cpu_s` of CPU."""
    events = sorted(events)
    first = next((e[0] for e in events if e[2] == "h0"), events[0][0])
    lo, hi = first + start_s, first + end_s
    lines = []
    # Each step's writes: (replica, slot start, step end, w0 time, w1 time, n, step s, i0).
    opened: dict[int, tuple[float, float, float, int]] = {}
    steps = []
    for i, (t, _, code, index, a, b) in enumerate(events):
        if code == "w0":
            opened[index] = (t, a, b, i)
        elif code == "w1" and index in opened:
            w0, start, due, i0 = opened.pop(index)
            if lo < w0 < hi and a > 0:
                steps.append((index, start, due, w0, t, int(a), b, i0))
    fractions = []
    late = []
    for step in steps:
        _, _, due, w0, w1, n, step_s, _ = step
        each = (w1 - w0) / n
        worst = 0.0
        for k in range(1, n + 1):
            f = abs(w0 + k * each - due) / step_s
            fractions.append(f)
            worst = max(worst, f)
        if worst > threshold:
            late.append(step)
    if not steps:
        return "no steps with writes in the window"
    frac = np.array(fractions)
    wake = np.array([s[3] - s[1] for s in steps]) * 1e3
    lines.append(
        f"steps {len(steps)}, tokens {len(frac)}: lag p50 {np.percentile(frac, 50):.2%}, "
        f"p99 {np.percentile(frac, 99):.2%} of the step; {np.mean(frac > threshold):.2%} "
        f"of tokens past {threshold:.0%}; wake-up lag ms p50/p99/max "
        f"{np.percentile(wake, 50):.3f}/{np.percentile(wake, 99):.3f}/{wake.max():.3f}"
    )
    # For each late step: from its slot's start to its wake-up, what was open.
    wall: dict[str, float] = collections.defaultdict(float)
    running: dict[str, float] = collections.defaultdict(float)
    for _, start, _, _, _, _, _, i0 in late:
        j = i0
        while j > 0 and events[j - 1][0] >= start:
            j -= 1
        k = j
        while k > 0 and events[k - 1][0] > start - 0.01:
            k -= 1
        open_now: set[tuple[str, int]] = set()
        for e in events[k:j]:
            _track(open_now, e)
        prev_t, prev_cpu = start, events[j - 1][1] if j else events[j][1]
        prev_cpu_t = events[j - 1][0] if j else events[j][0]
        for e in events[j : i0 + 1]:
            t, cpu = e[0], e[1]
            kinds = sorted({SPANS[code][1] for code, _ in open_now}) or ["untraced"]
            key = "+".join(kinds)
            wall[key] += t - prev_t
            share = (cpu - prev_cpu) / (t - prev_cpu_t) if t > prev_cpu_t else 1.0
            running[key] += (t - prev_t) * min(share, 1.0)
            prev_t, prev_cpu, prev_cpu_t = t, cpu, t
            _track(open_now, e)
    lines.append(
        f"{len(late)} late steps ({len(late) / len(steps):.1%}); from slot start to "
        f"wake-up, per late step, by what the loop was in:"
    )
    for key, total in sorted(wall.items(), key=lambda kv: -kv[1]):
        share = running[key] / total if total > 0 else 1.0
        lines.append(f"  {key:>24}: {total / max(len(late), 1) * 1e3:.3f} ms (running {share:.0%})")
    # Span durations.
    durations: dict[str, list[float]] = collections.defaultdict(list)
    starts: dict[tuple[str, int], float] = {}
    for t, _, code, index, _a, b in events:
        if not lo < t < hi:
            continue
        if code in SPANS:
            starts[(code, index)] = t
        elif code in _CLOSES and (_CLOSES[code][0], index) in starts:
            name = _CLOSES[code][1]
            if code == "c1":
                name += " (admitting)" if b > 0 else " (decode)"
            durations[name].append(t - starts.pop((_CLOSES[code][0], index)))
    lines.append("spans, ms p50 / p99 / max:")
    for name, values in sorted(durations.items()):
        v = np.array(values) * 1e3
        lines.append(
            f"  {name:>20} x{len(v):<6} {np.percentile(v, 50):.3f} / "
            f"{np.percentile(v, 99):.3f} / {v.max():.3f}"
        )
    lines += stall_report(events, lo, hi, stall_cpu_s)
    return "\n".join(lines)


def stalls(events: list[Event], lo: float, hi: float, min_cpu_s: float = 0.001) -> list[Event]:
    """Stretches between consecutive trace points within (lo, hi) in which the thread
    ran more than `min_cpu_s` of CPU: (start, cpu s, previous code, replica, wall s,
    next code's index in `events`) per stall, in time order. `events` sorted by time."""
    out: list[Event] = []
    for i in range(1, len(events)):
        t0, cpu0, code0, index0, _, _ = events[i - 1]
        t1, cpu1, _, _, _, _ = events[i]
        if lo < t0 < hi and cpu1 - cpu0 > min_cpu_s:
            out.append((t0, cpu1 - cpu0, code0, index0, t1 - t0, float(i)))
    return out


def stall_report(events: list[Event], lo: float, hi: float, min_cpu_s: float) -> list[str]:
    """Lines: the count of stalls (see `stalls`) by the trace points around them, and
    the longest ones."""
    found = stalls(events, lo, hi, min_cpu_s)
    lines = [f"stalls over {min_cpu_s * 1e3:g} ms of CPU: {len(found)}"]
    by_kind: dict[str, list[float]] = collections.defaultdict(list)
    labelled = []
    for t, cpu_s, code, _, _, i in found:
        nxt = events[int(i)][2]
        kind = f"{code}>{nxt}"
        by_kind[kind].append(cpu_s)
        labelled.append((cpu_s, t, kind))
    for kind, values in sorted(by_kind.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"  {kind:>8}: {len(values)} (CPU ms max {max(values) * 1e3:.2f})")
    for cpu_s, t, kind in sorted(labelled, reverse=True)[:10]:
        lines.append(f"  {t - lo:8.3f} s  {kind:>8}  {cpu_s * 1e3:.2f} ms")
    return lines


def _track(open_now: set[tuple[str, int]], e: Event) -> None:
    code, index = e[2], e[3]
    if code in SPANS:
        open_now.add((code, index))
    elif code in _CLOSES:
        open_now.discard((_CLOSES[code][0], index))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace", type=Path)
    ap.add_argument("--start-s", type=float, default=4.0, help="after the first request")
    ap.add_argument("--end-s", type=float, default=9.5, help="after the first request")
    ap.add_argument("--threshold", type=float, default=0.05, help="late: lag over step")
    ap.add_argument("--stall-ms", type=float, default=1.0, help="a stall: CPU ms untraced")
    args = ap.parse_args()
    events: list[Event] = [tuple(json.loads(line)) for line in args.trace.read_text().splitlines()]
    print(report(events, args.start_s, args.end_s, args.threshold, args.stall_ms / 1e3))


if __name__ == "__main__":
    main()

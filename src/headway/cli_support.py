"""What the subcommands share: logging set-up, running a main coroutine on uvloop with
configuration errors turned into exit status 2, and argparse types used by several
commands (`KEY=VALUE` parameters, `--goodput METRIC:MS`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import signal
import sys
from collections.abc import Coroutine
from typing import Any

import uvloop


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def run_main(
    prog: str, main: Coroutine[Any, Any, None], errors: tuple[type[Exception], ...]
) -> int:
    """Run `main` until it returns or Ctrl-C; an exception in `errors` is reported on one
    line (no traceback) with exit status 2."""
    try:
        with contextlib.suppress(KeyboardInterrupt):
            uvloop.run(main)
    except errors as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0


def key_value_arg(text: str) -> tuple[str, object]:
    """argparse type for `KEY=VALUE`; the value is parsed as JSON when it is JSON
    (`n=8` -> 8, `d={"kind": "lognormal"}`), else kept as the string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value: object = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


GOODPUT_KEYS = {"ttft": "ttft_ms", "tpot": "tpot_ms", "e2el": "e2el_ms"}


def goodput_arg(text: str) -> tuple[str, float]:
    """argparse type for one `--goodput` item, `METRIC:MS` as vLLM's bench spells it
    (METRIC one of ttft, tpot, e2el) -> (GoodputSlo field name, milliseconds)."""
    name, sep, raw = text.partition(":")
    if not sep or name not in GOODPUT_KEYS:
        raise argparse.ArgumentTypeError(
            f"expected METRIC:MS with METRIC one of {', '.join(GOODPUT_KEYS)}, got {text!r}"
        )
    try:
        ms = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}: expected milliseconds, got {raw!r}") from None
    if not (math.isfinite(ms) and ms > 0):
        raise argparse.ArgumentTypeError(f"{name}: must be > 0 ms, got {raw!r}")
    return GOODPUT_KEYS[name], ms


def stop_on_first_sigint(prog: str) -> asyncio.Event:
    """Call from the running task: the first Ctrl-C sets the returned event (the command
    stops issuing work and reports what it has), a second one cancels the task."""
    loop = asyncio.get_running_loop()
    stop_event = asyncio.Event()
    task = asyncio.current_task()

    def on_sigint() -> None:
        if stop_event.is_set() and task is not None:
            task.cancel()
        else:
            print(f"\n{prog}: stopping; Ctrl-C again to abort", file=sys.stderr)
            stop_event.set()

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    return stop_event

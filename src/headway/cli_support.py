"""What the long-running subcommands (`sim`, `serve`) share: logging set-up and running
their main coroutine on uvloop with configuration errors turned into exit status 2."""

from __future__ import annotations

import contextlib
import logging
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

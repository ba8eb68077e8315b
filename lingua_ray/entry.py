"""What every entry point does with an error: one line on stderr, exit 1.

Users run lingua_ray from cron, `ray job submit` and Hydra sweeps, where a wall of traceback
hides the one sentence that says what to fix. Every library error already names what is wrong,
where, and what to do, so the entry point prints only that. ``LINGUA_RAY_DEBUG=1`` re-raises,
for the traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, TypeVar

T = TypeVar("T")

DEBUG_ENV = "LINGUA_RAY_DEBUG"


def one_line_errors(fn: Callable[[], T], prefix: str = "error", hint: bool = True) -> T:
    """Call ``fn()``; on any exception print ``<prefix>: <Type>: <message>`` and exit 1.

    ``hint`` adds a second line saying how to see the traceback.
    """
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - the entry point's one-line report
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"{prefix}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        if hint:
            print(f"({DEBUG_ENV}=1 shows the traceback)", file=sys.stderr, flush=True)
        sys.exit(1)

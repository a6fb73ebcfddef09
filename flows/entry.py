"""The ``kd`` command's entry point: stdlib only, so that Ctrl-C at any moment, while kd
imports PyTorch, MLflow and Prefect (seconds) as much as while it trains, ends with one line
and exit 130, never a traceback."""

from __future__ import annotations

import os
import signal
import sys
from typing import NoReturn

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a job ended by Ctrl-C


def _interrupted(signum: int, frame: object) -> None:
    """Ctrl-C while kd imports its libraries: out at once, nothing to undo (nothing written
    yet). Not an exception: one raised inside a library's C++ import code (a pybind11
    callback) aborts the process with a C++ backtrace instead of unwinding."""
    try:
        print("kd: interrupted", file=sys.stderr, flush=True)
    finally:
        os._exit(EXIT_INTERRUPTED)


def command() -> NoReturn:
    try:
        previous = signal.signal(signal.SIGINT, _interrupted)
        from flows.cli import command as kd

        if signal.getsignal(signal.SIGINT) is _interrupted:  # unless a library set its own
            signal.signal(signal.SIGINT, previous)
        kd()
    except KeyboardInterrupt:
        # An interrupt during the work itself is told (runs ended KILLED) by flows.cli; one
        # during the imports, or after the work, lands here.
        try:
            print("kd: interrupted", file=sys.stderr, flush=True)
        finally:
            os._exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    command()

"""The ``kd`` command's entry point: stdlib only, so that Ctrl-C at any moment, while kd
imports PyTorch, MLflow and Prefect (seconds) as much as while it trains, ends with one line
and exit 130, never a traceback."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a job ended by Ctrl-C


def command() -> NoReturn:
    try:
        from flows.cli import command as kd

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

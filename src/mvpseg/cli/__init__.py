"""The ``mvpseg`` command line: one module per command, flags generated from the configs.

Building the parser imports no torch (each command imports what it needs when it runs), so
``mvpseg --help`` and ``mvpseg COMMAND --help`` answer at once.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from ..version import __version__
from . import benchmark, demo, evaluate, export, prepare, push, segment, serve, train, transfer
from .common import UsageError

__all__ = ["build_parser", "main", "UsageError"]

#: The commands, in the order ``mvpseg --help`` lists them.
COMMANDS = (segment, serve, evaluate, benchmark, prepare, train, transfer, push, export, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mvpseg",
        description="MVP-SEG: open-vocabulary semantic segmentation with multi-view prompts on a frozen CLIP.",
    )
    parser.add_argument("--version", action="version", version=f"mvpseg {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def _error(message: str) -> None:
    print(f"mvpseg: error: {message}", file=sys.stderr)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file=None,
                  line: str | None = None) -> None:
    """mvpseg's own warnings as one line ("mvpseg: warning: ..."); others as Python shows them."""
    if category.__module__.startswith("mvpseg"):
        print(f"mvpseg: warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _expected_status(error: Exception) -> int | None:
    """The exit status of an error that is the user's to fix (printed in one line), or None for a bug."""
    clip = sys.modules.get("mvpseg.clip")  # only a loaded CLIP module can have raised its error
    if clip is not None and isinstance(error, clip.ClipWeightsUnavailable):
        return 1
    if isinstance(error, (UsageError, ValueError)):  # CheckpointError, DataLayoutError, ... are ValueErrors
        return 2
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mvpseg`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():  # restores the host's warning display afterwards
            warnings.showwarning = _show_warning
            return int(args.run(args))
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except Exception as error:
        status = _expected_status(error)
        if status is None:
            raise
        _error(str(error))
        return status


if __name__ == "__main__":
    sys.exit(main())

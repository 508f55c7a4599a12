"""Command-line entry points. ``scripts/*.py`` and the Pixi tasks are thin calls of these."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from sam2_triton.models import UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are :class:`UserError`: one ``error:`` line through
    :func:`run_cli`, no usage block."""

    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{message} (see --help)")


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None):
    """Run ``main``; a :class:`UserError` becomes one ``error:`` line on stderr and exit 2.

    Ctrl-C exits 130 without a traceback. Anything else is a bug and keeps its traceback.
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        code = main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)

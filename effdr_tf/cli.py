"""What every command-line entry point shares: logging set-up and one-line errors."""

from __future__ import annotations

import functools
import logging
import sys


def entry_point(main):
    """Wraps an absl ``main(argv)``: user errors become ``error: <message>`` and exit code 2.

    Anything else is a bug and keeps its traceback.
    """
    from effdr_tf.errors import EffdrError

    @functools.wraps(main)
    def wrapped(argv):
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        try:
            return main(argv) or 0
        except EffdrError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapped

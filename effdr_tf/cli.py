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
        from absl import logging as absl_logging

        # Our messages at INFO; TensorFlow's Python-side INFO chatter (through absl) hidden.
        absl_logging.set_verbosity(absl_logging.WARNING)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        package = logging.getLogger("effdr_tf")
        package.setLevel(logging.INFO)
        package.addHandler(handler)
        package.propagate = False
        try:
            return main(argv) or 0
        except EffdrError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapped


def parse_flags_or_exit(argv):
    """absl flag parsing with bad flags (and bad ``--config.x=`` overrides) as one line, exit 2."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except (flags.Error, KeyError, AttributeError, ValueError, TypeError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)

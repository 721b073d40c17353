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
    except (KeyError, AttributeError) as e:
        # ml_collections reports an unknown key as an AttributeError wrapping a KeyError whose
        # text is "'key'\nDid you mean ...?"; str() of either prints a quoted Python literal.
        inner = e.args[0] if e.args and isinstance(e.args[0], KeyError) else e
        if isinstance(inner, KeyError):
            print(f"error: {_unknown_key(inner, argv)}", file=sys.stderr)
            sys.exit(2)
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except (flags.Error, ValueError, TypeError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def _unknown_key(error: KeyError, argv) -> str:
    """One line for an override naming a setting the config does not have."""
    text = str(error.args[0]) if error.args else ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    key = lines[0].strip("'\"") if lines else "?"
    hint = " ".join(lines[1:])
    flag = next(
        (a.split("=", 1)[0] for a in argv[1:] if a.startswith("--") and key in a.split("=", 1)[0]),
        None,
    )
    where = f"{flag}: " if flag else ""
    return f"{where}no setting named {key!r}" + (f"; {hint[0].lower()}{hint[1:]}" if hint else "")

"""Errors that reach users as one line, without a traceback."""


class EffdrError(Exception):
    """A problem with the user's input: a file, a flag or a configuration.

    Command-line entry points print ``error: <message>`` and exit non-zero; the message names
    the file or value at fault and what is wrong with it.
    """


class WeightsError(EffdrError, ValueError):
    """A checkpoint that cannot be read, or that does not fit the model."""

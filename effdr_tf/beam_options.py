"""Apache Beam, where it is used: the builder's ``--runner=beam`` and batch grading.

Beam is an optional extra (``pip install -e '.[beam]'``): nothing imports it until a command
asks for the Beam runner, and then a missing install is one error line. Pipeline options are
given as one string, as ``tfds build --beam_pipeline_options`` takes them, e.g.
``--beam_pipeline_options="--runner=DataflowRunner --project=P --region=R
--temp_location=gs://B/tmp"``; left empty, the pipeline runs here on Beam's local runner
(``FnApiRunner``) with one process per worker.
"""

from __future__ import annotations

import logging
import shlex

from effdr_tf.errors import EffdrError

RUNNERS = ("local", "beam")
INSTALL_HINT = "pip install -e '.[beam]'"


def import_beam():
    """The ``apache_beam`` module; EffdrError with the install command when it is missing."""
    try:
        import apache_beam
    except ImportError as e:
        raise EffdrError(
            f"--runner=beam needs Apache Beam, which is not installed: {INSTALL_HINT}"
        ) from e
    return apache_beam


def pipeline_options(text: str | None, workers: int = 1):
    """``PipelineOptions`` from a command-line string.

    Args:
        text: options as one string (shell quoting applies); empty or None runs here, on
            ``FnApiRunner``.
        workers: with no ``--runner`` in ``text``, the local runner's worker processes
            (``multi_processing`` mode when above 1, in-memory otherwise).

    Raises:
        EffdrError: the string cannot be split, or names an option Beam does not know.
    """
    import_beam()
    from apache_beam.options.pipeline_options import PipelineOptions

    try:
        args = shlex.split(text or "")
    except ValueError as e:
        raise EffdrError(f"--beam_pipeline_options={text!r}: {e}") from e
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        # Not "DirectRunner": Beam 2.77's DirectRunner first tries the Prism runner, which
        # downloads its binary from GitHub (apache_beam/runners/direct/direct_runner.py), and
        # falls back to FnApiRunner only after that fails; nothing here downloads at run time.
        args += ["--runner=FnApiRunner"]
        # The local workers print their start-up and shutdown on stderr (their own logging,
        # set up before any option reaches them) and forward each line to this process's log
        # as well; the copies at least need not be shown twice.
        logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(
            logging.WARNING
        )
        if workers > 1:
            args += [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]
    options = PipelineOptions(args)
    # Beam only logs options it does not know and runs without them: a mistyped worker count
    # or project would then be silently ignored.
    known = options.get_all_options(retain_unknown_options=False)
    unknown = sorted(set(options.get_all_options(retain_unknown_options=True)) - set(known))
    if unknown:
        raise EffdrError(
            f"--beam_pipeline_options: --{unknown[0]} is not an Apache Beam pipeline option"
        )
    return options

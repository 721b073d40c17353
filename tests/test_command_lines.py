"""Flag mistakes in train.py and eval.py: one ``error:`` line, exit code 2, nothing written,
and TensorFlow never loaded (the builder's flags are checked in test_builder.py with the
helpers here)."""

import pytest

from tests.conftest import run_command


def run_without_tensorflow(script, *args):
    """Runs a command as ``python script args``, listing every module it imports."""
    probe = "import runpy, sys; sys.argv = sys.argv[1:]; "
    probe += f"runpy.run_path({script!r}, run_name='__main__')"
    return run_command("-X", "importtime", "-c", probe, script, *args)


def one_error_line(result, message):
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "tensorflow" not in result.stderr, "TensorFlow was imported"


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--config.train.epochs=-1", "train.epochs=-1: must be at least 1"),
        ("--config.train.epochs=0", "train.epochs=0: must be at least 1"),
        ("--config.train.steps_per_epoch=-5", "train.steps_per_epoch=-5: must be at least 0"),
        ("--config.data.batch_size=0", "data.batch_size=0: must be at least 1"),
        ("--config.train.learning_rate=0", "train.learning_rate=0.0: must be positive"),
        ("--config.train.optimizer=adamw", "train.optimizer='adamw': choose one of rmsprop"),
        ("--config.train.label_smoothing=1.5", "train.label_smoothing=1.5: must be in [0, 1)"),
        ("--config.augment.magnitude=40", "augment.magnitude=40.0: must be in [0, augment"),
        ("--config.train.epochs=ten", "ten"),
        (
            "--config.train.learnig_rate=1",
            "error: --config.train.learnig_rate: no setting named 'learnig_rate'; did you mean "
            '"learning_rate"',
        ),
        ("--strategy=gpu", "value should be one of <default|mirrored|multi_worker|tpu>"),
    ],
)
def test_train_flag_mistakes(tmp_path, flag, message):
    out = tmp_path / "run"
    result = run_without_tensorflow(
        "train.py", "--config=configs/demo.py", f"--data_dir={tmp_path}", f"--model_dir={out}", flag
    )
    one_error_line(result, message)
    assert not out.exists()


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--bootstrap=-1", "--bootstrap must be 0 or more"),
        ("--split=valid", "--split takes one or more of train, validation"),
        ("--tta=rotate", "value should be one of <none|flip|dihedral>"),
    ],
)
def test_eval_flag_mistakes(tmp_path, flag, message):
    out = tmp_path / "out"
    result = run_without_tensorflow("eval.py", f"--model_dir={tmp_path}", f"--out={out}", flag)
    one_error_line(result, message)
    assert not out.exists()

"""Noisy Student self-training on unlabelled photographs (see docs/self_training.md).

    python self_train.py --config=configs/demo.py --data_dir=TFREC --teacher=RUN \\
        --work_dir=WORK --rounds=2 [--unlabelled_dir=TFREC2] [--per_class=N] [--threshold=P]
"""

from absl import app, flags
from ml_collections import config_flags

from effdr_tf import cli
from effdr_tf.training import options  # no TensorFlow: the config is checked before it loads

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Student recipe.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Labelled shards (with a validation split).")
_UNLABELLED_DIR = flags.DEFINE_string(
    "unlabelled_dir", None, "Shards with the unlabelled split; default --data_dir."
)
_TEACHER = flags.DEFINE_string(
    "teacher", None, "The first teacher's run (comma-separated: an ensemble).", required=True
)
_WORK_DIR = flags.DEFINE_string("work_dir", None, "Where the rounds live.", required=True)
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Students to train, each teaching the next.")
_THRESHOLD = flags.DEFINE_float("threshold", 0.0, "Drop pseudo-labels less confident than this.")
_PER_CLASS = flags.DEFINE_integer(
    "per_class", 0, "Images per grade, most confident first, duplicated where short (0: all)."
)
_HARD = flags.DEFINE_bool("hard", False, "One-hot pseudo-labels instead of probabilities.")
_TTA = flags.DEFINE_enum("tta", "none", ["none", "flip", "dihedral"], "The teacher's views.")
_STRATEGY = flags.DEFINE_enum("strategy", "default", options.STRATEGIES, "How students train.")

flags.register_validator("rounds", lambda v: v >= 1, message="--rounds must be at least 1")
flags.register_validator("per_class", lambda v: v >= 0, message="--per_class must be 0 or more")
flags.register_validator(
    "threshold", lambda v: 0.0 <= v <= 1.0, message="--threshold must be in [0, 1]"
)


@cli.entry_point
def main(argv):
    del argv
    config = _CONFIG.value
    if _DATA_DIR.value:
        config.data.data_dir = _DATA_DIR.value
    options.check(config)
    from effdr_tf.selftrain import rounds

    table = rounds.self_train(
        config,
        _TEACHER.value,
        _WORK_DIR.value,
        rounds=_ROUNDS.value,
        unlabelled_dir=_UNLABELLED_DIR.value,
        threshold=_THRESHOLD.value,
        per_class=_PER_CLASS.value,
        soft=not _HARD.value,
        tta=_TTA.value,
        strategy=_STRATEGY.value,
    )
    print("\nround  validation kappa  accuracy  model")
    for row in table:
        print(f"{row['round']:>5}  {row['kappa']:>16.4f}  {row['accuracy']:>8.4f}  {row['model']}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)

"""Trains an EfficientNet DR grader (see docs/training.md).

    python train.py --config=configs/kaggle_dr.py:b5,tpu --strategy=tpu \\
        --data_dir=gs://BUCKET/tfrec --model_dir=gs://BUCKET/runs/b5
    python train.py --config=configs/demo.py --data_dir=TFREC --model_dir=RUN \\
        --config.train.epochs=3
"""

from absl import app, flags
from ml_collections import config_flags

from effdr_tf import cli
from effdr_tf.training import options  # no TensorFlow: the config is checked before it loads

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "Recipe file[:arg].")
_STRATEGY = flags.DEFINE_enum("strategy", "default", options.STRATEGIES, "How to distribute.")
_TPU = flags.DEFINE_string(
    "tpu", None, "--strategy=tpu: a TPU node's name or grpc:// address; leave out on a TPU VM."
)
_VARIANT = flags.DEFINE_string("variant", None, "Overrides config.variant (b0..b7, lite0..4).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "The builder's output folder.")
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Where checkpoints and logs go.")


@cli.entry_point
def main(argv):
    del argv
    config = _CONFIG.value
    if _VARIANT.value:
        config.variant = _VARIANT.value
    if _DATA_DIR.value:
        config.data.data_dir = _DATA_DIR.value
    options.check(config)
    if _STRATEGY.value == "tpu":  # before TensorFlow loads and the TPU is connected
        options.check_tpu_paths(_TPU.value, _MODEL_DIR.value, config.data.data_dir)
    from effdr_tf.training import loop

    loop.train(config, _MODEL_DIR.value, strategy=_STRATEGY.value, tpu=_TPU.value)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)

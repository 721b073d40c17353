"""Converts an EfficientNet checkpoint into a Keras weights file that training loads fast.

python -m effdr_tf.models.convert --variant=b5 tf_efficientnet_b5_ns.pth b5_ns.weights.h5
"""

from absl import app, flags

from effdr_tf import cli
from effdr_tf.errors import EffdrError

_VARIANT = flags.DEFINE_string("variant", None, "b0..b8, l2, lite0..lite4; detected if unset.")
_NORMALIZATION = flags.DEFINE_string(
    "normalization", "auto", "Input normalisation to record; auto = what the checkpoint expects."
)
_INCLUDE_TOP = flags.DEFINE_bool("include_top", True, "Keep the checkpoint's classifier.")


@cli.entry_point
def main(argv):
    if len(argv) != 3:
        raise EffdrError(
            "usage: python -m effdr_tf.models.convert [--variant=b5] SRC DST.weights.h5"
        )
    from effdr_tf import models

    info = models.convert(
        argv[1],
        argv[2],
        variant=_VARIANT.value,
        normalization=_NORMALIZATION.value,
        include_top=_INCLUDE_TOP.value,
    )
    print(
        f"wrote {info['dst']}: efficientnet-{info['variant']} from {info['family']}, "
        f"{info['num_classes'] or 'no'} classes, normalization {info['normalization']}"
    )


if __name__ == "__main__":
    app.run(main)

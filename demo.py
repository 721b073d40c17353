"""The quickstart demo: synthetic DR data -> fine-tuned EfficientNet-Lite0 -> report.

make demo
python demo.py --out_dir=out/demo [--num_images=2000] [--image_size=160] [--config.seed=1]
"""

import os

from absl import app, flags
from ml_collections import config_flags

from effdr_tf import cli

_HERE = os.path.dirname(os.path.abspath(__file__))
_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(_HERE, "configs", "demo.py"), "Recipe file[:arg]."
)
_OUT = flags.DEFINE_string("out_dir", "out/demo", "Where the demo writes its outputs.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 2000, "synthetic_dr photographs to build.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 160, "Their side in pixels.")


@cli.entry_point
def main(argv):
    del argv
    from effdr_tf import demo

    demo.run(_CONFIG.value, _OUT.value, num_images=_NUM_IMAGES.value, image_size=_IMAGE_SIZE.value)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)

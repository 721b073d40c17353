"""Which class-activation map says most about where the lesions are, against two nulls.

On a finished demo (``python demo.py --out_dir=DIR``), every map of ``demo.MAPS`` (Grad-CAM and
HiResCAM at the last stage and at the stride-16 stage) is computed for each test photograph
with referable DR and measured as ``gradcam.compare`` does: the pixel AUC of the heat for the
drawn lesions against the rest of the fundus, beside a centred Gaussian and another
photograph's lesions on the same photographs. The demo draws its overlays with the map whose
AUC is furthest above the better null.

    python benchmarks/explanations.py --demo_dir=out/demo [--num_images=2000] [--image_size=160]

Pass the ``--num_images``, ``--image_size`` and ``--config.seed`` the demo ran with (its
defaults are this script's). The last line is ``best=<map> lead=<AUC above the better null>``.
"""

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--demo_dir", required=True)
    parser.add_argument("--num_images", type=int, default=2000)
    parser.add_argument("--image_size", type=int, default=160)
    args = parser.parse_args()

    from effdr_tf import demo
    from effdr_tf.data.sources.synthetic_dr import SyntheticDR
    from effdr_tf.evaluation import gradcam

    run_dir = os.path.join(args.demo_dir, "run")
    with open(os.path.join(run_dir, "config.json")) as f:
        seed = json.load(f)["seed"]
    source = SyntheticDR(num_images=args.num_images, seed=seed, image_size=args.image_size)
    with tempfile.TemporaryDirectory() as out:
        explained = demo.explain(run_dir, source, os.path.join(args.demo_dir, "tfrecords"), out)
    print(gradcam.table_text(explained["table"]))
    print(explained["verdict"])
    best = explained["lesion_focus"]
    print(f"best={explained['default']!r} lead={best['lead']:+.3f}")


if __name__ == "__main__":
    main()

"""``synthetic_dr``: the built-in semi-synthetic DR dataset (see ``effdr_tf.data.synthetic``).

No data_dir: ``--data=synthetic_dr --num_images=N [--seed=S] [--synthetic_preset=hard]``. Two
eyes per patient; a fifth of the patients form the ``test`` split, the builder carves
``validation`` out of the rest. Under the ``hard`` preset some labels are a neighbouring grade
of the findings drawn (``synthetic.PRESETS``), in every split, as a second grader's would be.
"""

import dataclasses
import functools

import numpy as np

from effdr_tf.data import fundus, synthetic
from effdr_tf.data.schema import Record
from effdr_tf.data.sources import base
from effdr_tf.errors import EffdrError

TEST_PATIENT_FRACTION = 0.2


@dataclasses.dataclass
class SyntheticDR(base.Source):
    num_images: int = 1000
    seed: int = 0
    image_size: int = 224
    preset: str = "standard"
    name = "synthetic_dr"

    @property
    def style(self) -> synthetic.Preset:
        return synthetic.preset(self.preset)

    @functools.cached_property
    def _drawn(self) -> list[tuple[int, str, int]]:
        """(patient, eye, grade drawn) per image index."""
        return synthetic.assign_grades(self.num_images, self.seed)

    @property
    def work_size(self) -> int:
        # Lesions are painted at twice the output size (at least 448 px) and shrunk, as real
        # photographs are; at most the base photograph's own 1411 px.
        return int(min(1411, max(448, 2 * self.image_size)))

    def check(self):
        if self.num_images < 2:
            raise EffdrError(f"--num_images={self.num_images}: need at least 2 images")
        if self.preset not in synthetic.PRESETS:
            raise EffdrError(
                f"--synthetic_preset={self.preset}: choose one of {', '.join(synthetic.PRESETS)}"
            )

    def describe(self):
        return {
            "name": self.name,
            "num_images": self.num_images,
            "seed": self.seed,
            "preset": self.preset,
            "label_noise": list(self.style.boundary_noise),
            "synthetic": True,
            "base_photograph": "skimage.data.retina() (CC0)",
        }

    def scan(self):
        grades = self._drawn
        labels = synthetic.noisy_labels(
            [g for _, _, g in grades], self.seed, self.style.boundary_noise
        )
        patients = sorted({p for p, _, _ in grades})
        rng = np.random.default_rng([self.seed, 11])
        n_test = int(round(TEST_PATIENT_FRACTION * len(patients)))
        test = set(rng.permutation(patients)[:n_test].tolist())
        for index, ((patient, eye, _), label) in enumerate(zip(grades, labels, strict=True)):
            image_id = f"{patient:05d}_{eye}"
            yield Record(
                path=f"synthetic_dr/{index}",
                label=label,
                id=image_id,
                patient_id=f"{patient:05d}",
                eye=eye,
                split="test" if patient in test else "train",
            )

    def _generate(self, record) -> tuple[np.ndarray, np.ndarray]:
        index = int(record.path.rsplit("/", 1)[1])
        drawn = self._drawn[index][2]  # the findings; the label may be a neighbouring grade
        return synthetic.generate(
            drawn, index, self.seed, size=self.work_size, eye=record.eye, style=self.style
        )

    def load(self, record, min_side=None, max_pixels=None):
        return self._generate(record)[0]

    def lesion_view(self, record, size: int) -> tuple[np.ndarray, np.ndarray]:
        """The photograph as the builder's ``crop`` mode writes it at ``size``, and its lesion
        opacity map cropped and resized the same way (to check where explanations point).

        Returns:
            (RGB uint8 [size, size, 3], float32 [size, size] in [0, 1]).
        """
        image, lesions = self._generate(record)
        x0, y0, x1, y1 = fundus.find_disc(image)
        opacity = np.round(lesions[y0:y1, x0:x1] * 255).astype(np.uint8)
        opacity = fundus.resize_and_pad(np.repeat(opacity[..., None], 3, axis=2), size)
        return fundus.resize_and_pad(image[y0:y1, x0:x1], size), opacity[..., 0] / np.float32(255)

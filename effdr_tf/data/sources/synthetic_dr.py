"""``synthetic_dr``: the built-in semi-synthetic DR dataset (see ``effdr_tf.data.synthetic``).

No data_dir: ``--data=synthetic_dr --num_images=N [--seed=S] [--synthetic_preset=hard]``. Two
eyes per patient; a fifth of the patients form the ``test`` split, the builder carves
``validation`` out of the rest. Under the ``hard`` preset some labels are a neighbouring grade
of the findings drawn (``synthetic.PRESETS``), in every split, as a second grader's would be.

Under the ``varied`` preset (``synthetic_sites``) every eye has its own procedural photograph,
every patient is photographed at one camera site, some photographs are ungradable, and each
label is the read of one of several simulated graders. ``--synthetic_test_sites=C`` puts the
patients of site C (and only those) in the ``test`` split, to measure a shift to an unseen
camera; ``describe()`` lists each image's site, ungradable kind, latent severity and every
grader's read (``image_info`` gives the same per image id).
"""

import dataclasses
import functools

import numpy as np

from effdr_tf.data import fundus, synthetic, synthetic_sites
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
    # ``varied`` only: the sites whose patients form the test split (empty: a random fifth of
    # the patients, as for the other presets).
    test_sites: tuple[str, ...] = ()
    name = "synthetic_dr"

    @property
    def style(self) -> synthetic.Preset:
        return synthetic.preset(self.preset)

    @functools.cached_property
    def _drawn(self) -> list[tuple[int, str, int]]:
        """(patient, eye, grade drawn) per image index."""
        return synthetic.assign_grades(self.num_images, self.seed)

    @functools.cached_property
    def _varied(self) -> dict:
        """Per image index under ``varied``: site, ungradable kind, severity, reads, label."""
        grades = [g for _, _, g in self._drawn]
        severity = synthetic_sites.latent_severity(grades, self.seed)
        reads = synthetic_sites.grader_reads(severity, self.seed)
        grader = synthetic_sites.labelling_grader(len(grades), self.seed)
        num_patients = self._drawn[-1][0] + 1
        site_of_patient = np.random.default_rng([self.seed, 29]).integers(
            0, len(synthetic_sites.SITES), num_patients
        )
        rng = np.random.default_rng([self.seed, 31])
        sites, ungradable = [], []
        for patient, _, _ in self._drawn:
            profile = synthetic_sites.SITES[site_of_patient[patient]]
            u, kind = rng.random(), rng.choice(synthetic_sites.UNGRADABLE_KINDS)
            sites.append(profile.name)
            ungradable.append(str(kind) if u < profile.ungradable else "")
        return {
            "site": sites,
            "ungradable": ungradable,
            "severity": severity,
            "reads": reads,
            "label": reads[np.arange(len(grades)), grader],
        }

    def image_info(self) -> dict[str, dict]:
        """``varied`` only: per image id, its site, ungradable kind (empty when gradable), drawn
        grade, latent severity and every grader's read."""
        info = self._varied
        out = {}
        for index, (patient, eye, grade) in enumerate(self._drawn):
            out[f"{patient:05d}_{eye}"] = {
                "site": info["site"][index],
                "ungradable": info["ungradable"][index],
                "grade_drawn": grade,
                "severity": round(float(info["severity"][index]), 4),
                "reads": [int(v) for v in info["reads"][index]],
            }
        return out

    @property
    def work_size(self) -> int:
        if self.preset == "varied":
            # The fundus is drawn at most 512 px across, which keeps an image near 0.2 s.
            return int(min(512, max(256, 2 * self.image_size)))
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
        if self.test_sites:
            if self.preset != "varied":
                raise EffdrError("--synthetic_test_sites: only with --synthetic_preset=varied")
            names = synthetic_sites.SITE_NAMES
            unknown = [s for s in self.test_sites if s not in names]
            if unknown:
                raise EffdrError(
                    f"--synthetic_test_sites={','.join(unknown)}: choose among {', '.join(names)}"
                )
            if set(names) <= set(self.test_sites):
                raise EffdrError("--synthetic_test_sites: leave at least one site for training")

    def describe(self):
        if self.preset == "varied":
            info = self.image_info()
            return {
                "name": self.name,
                "num_images": self.num_images,
                "seed": self.seed,
                "preset": self.preset,
                "synthetic": True,
                "base_photograph": "procedural, one per eye",
                "sites": {s.name: dataclasses.asdict(s) for s in synthetic_sites.SITES},
                "test_sites": list(self.test_sites),
                "graders": [list(g) for g in synthetic_sites.GRADERS],
                "label": "the read of one grader, chosen at random per image",
                "ungradable": sorted(i for i, v in info.items() if v["ungradable"]),
                # Per image id; ``image_info()`` adds severity and every grader's read.
                "site_of_image": {i: v["site"] for i, v in info.items()},
            }
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
        if self.preset == "varied":
            labels = [int(v) for v in self._varied["label"]]
        else:
            labels = synthetic.noisy_labels(
                [g for _, _, g in grades], self.seed, self.style.boundary_noise
            )
        patients = sorted({p for p, _, _ in grades})
        rng = np.random.default_rng([self.seed, 11])
        n_test = int(round(TEST_PATIENT_FRACTION * len(patients)))
        test = set(rng.permutation(patients)[:n_test].tolist())
        if self.test_sites:
            sites = self._varied["site"]
            test = {p for i, (p, _, _) in enumerate(grades) if sites[i] in self.test_sites}
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
        patient, _, drawn = self._drawn[index]  # the findings; the label may differ
        if self.preset == "varied":
            info = self._varied
            return synthetic_sites.generate(
                drawn,
                float(info["severity"][index]),
                index,
                patient,
                self.seed,
                size=self.work_size,
                eye=record.eye,
                site_name=info["site"][index],
                ungradable=info["ungradable"][index],
                max_side=int(1.5 * self.work_size),
            )
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

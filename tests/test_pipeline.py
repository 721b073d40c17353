"""The tf.data pipeline: rebalancing, exactly-once evaluation, host sharding, bad shards."""

import dataclasses
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from configs import default
from effdr_tf import constants
from effdr_tf.data import builder
from effdr_tf.data.schema import Record
from effdr_tf.data.sources import Source
from effdr_tf.errors import EffdrError
from effdr_tf.pipeline import balance
from effdr_tf.pipeline import input as pipeline

EYEPACS_COUNTS = (25810, 2443, 5292, 873, 708)


@dataclasses.dataclass
class TinySource(Source):
    """Small solid-colour PNGs whose colour encodes the label; splits as given."""

    counts: dict = dataclasses.field(default_factory=dict)  # split -> per-class counts
    textured: bool = False  # per-pixel noise around the colour, so training sees texture
    name = "tiny"
    default_preprocess = "none"

    def check(self):
        pass

    def describe(self):
        return {"name": self.name, "counts": {k: list(v) for k, v in self.counts.items()}}

    def scan(self):
        n = 0
        for split, per_class in self.counts.items():
            for label, count in enumerate(per_class):
                for _ in range(count):
                    pixel = np.full((8, 8, 3), 40 * label + 20, np.uint8)
                    if self.textured:
                        noise = np.random.default_rng(n).integers(-25, 26, (32, 32, 3))
                        pixel = (40 * label + 20 + noise).clip(0, 255).astype(np.uint8)
                    png = cv2.imencode(".png", pixel)[1].tobytes()
                    yield Record(
                        path=f"tiny/{n}",
                        label=label,
                        id=f"{split}-{n:06d}",
                        patient_id=f"p{n // 2}",
                        split=split,
                        data=png,
                    )
                    n += 1


def build_tiny(tmp_path, counts, num_shards=None, textured=False, image_size=32):
    source = TinySource(counts=counts, textured=textured)
    options = builder.BuildOptions(
        image_size=image_size,
        preprocess="none",
        val_fraction=0.0,
        image_format="png",
        num_shards=num_shards,
    )
    return builder.build(source, str(tmp_path), options, progress=False)


def config_for(data_dir, **overrides):
    config = default.get_config()
    config.data.data_dir = str(data_dir)
    config.data.batch_size = 16
    config.data.eval_batch_size = 7
    config.data.eval_crop_fraction = 1.0
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        config[section][key] = value
    return config


@pytest.fixture(scope="module")
def eyepacs_like(tmp_path_factory):
    """2,000 training examples with the EyePACS class shares, 50 test examples."""
    total = sum(EYEPACS_COUNTS)
    train = [round(2000 * c / total) for c in EYEPACS_COUNTS]
    out = tmp_path_factory.mktemp("eyepacs_like")
    manifest = build_tiny(out, {"train": train, "test": [20, 10, 10, 5, 5]}, num_shards=12)
    return out, manifest


def _labels_from_records(records, n):
    parsed = records.take(n).map(lambda r: pipeline.parse(r)[constants.FEATURE_LABEL])
    return np.concatenate([x.numpy() for x in parsed.batch(2000)])


@pytest.mark.parametrize("target", ["uniform", "sqrt", "natural", [0.1, 0.1, 0.3, 0.3, 0.2]])
def test_rebalancing_hits_the_target_and_reads_only_what_it_emits(
    eyepacs_like, target, monkeypatch
):
    data_dir, manifest = eyepacs_like
    config = config_for(data_dir)
    reads = tf.Variable(0, dtype=tf.int64)
    original = pipeline.record_stream

    def counting(*args, **kwargs):
        return original(*args, **kwargs).map(lambda r: (reads.assign_add(1), r)[1])

    monkeypatch.setattr(pipeline, "record_stream", counting)
    shards = pipeline.split_shards(str(data_dir), "train", manifest=manifest)
    counts = pipeline.class_counts(str(data_dir))
    shares = balance.target_shares(counts, target)
    streams = pipeline.class_streams(shards, 5, None, config, seed=0)
    labels = _labels_from_records(balance.mix(streams, shares.tolist(), seed=1), 20000)
    observed = np.bincount(labels, minlength=5) / len(labels)
    assert np.abs(observed - shares).max() <= 0.02, (observed, shares)
    assert int(reads.numpy()) / len(labels) <= 1.05


def test_target_presets():
    counts = np.array(EYEPACS_COUNTS)
    np.testing.assert_allclose(balance.target_shares(counts, "uniform"), 0.2)
    # The thesis class weights are N / (5 n_c): uniform on the EyePACS counts.
    np.testing.assert_allclose(
        balance.target_shares(counts, "thesis_class_weights"), 0.2, atol=2e-3
    )
    sampler = balance.target_shares(counts, "balanced_sampler", multipliers=[1, 2, 1, 1, 1])
    np.testing.assert_allclose(sampler, [1 / 6, 2 / 6, 1 / 6, 1 / 6, 1 / 6])
    np.testing.assert_allclose(balance.target_shares(counts, "natural"), counts / counts.sum())
    with pytest.raises(EffdrError, match=r"class\(es\) \[3\] a share"):
        balance.target_shares([10, 5, 5, 0, 2], [0.2] * 5)
    assert balance.target_shares([10, 5, 5, 0, 2], "uniform")[3] == 0
    with pytest.raises(EffdrError, match="corrects the class imbalance twice"):
        balance.check_single_correction("uniform", [0.272, 2.875, 1.327, 8.047, 9.922])
    balance.check_single_correction("natural", [1.0] * 5)
    balance.check_single_correction("uniform", None)


def test_target_can_move_from_balanced_to_natural(eyepacs_like):
    data_dir, manifest = eyepacs_like
    counts = pipeline.class_counts(str(data_dir))
    start, end = balance.target_shares(counts, "uniform"), balance.target_shares(counts, "natural")
    shares = balance.schedule(start, end, transition_examples=4000)
    shards = pipeline.split_shards(str(data_dir), "train", manifest=manifest)
    streams = pipeline.class_streams(shards, 5, None, config_for(data_dir), seed=0)
    labels = _labels_from_records(balance.mix(streams, shares, seed=2), 12000)
    early = np.bincount(labels[:1000], minlength=5) / 1000
    late = np.bincount(labels[-4000:], minlength=5) / 4000
    assert early[0] < 0.35 and late[0] > 0.68


def test_training_batches_and_empty_class_error(eyepacs_like, tmp_path):
    data_dir, _ = eyepacs_like
    config = config_for(data_dir, balance__target="uniform", data__train_crop="fundus")
    images, labels = next(iter(pipeline.make_dataset(config, "train")))
    assert images.shape == (16, 32, 32, 3) and images.dtype == tf.float32
    assert labels.dtype == tf.int32 and float(tf.reduce_max(images)) <= 255.0
    # Solid colours encode the label: images and labels stay paired.
    unaugmented = config_for(data_dir, augment__name="none", data__train_crop="none")
    plain, plain_labels = next(iter(pipeline.make_dataset(unaugmented, "train")))
    np.testing.assert_allclose(plain.numpy()[:, 0, 0, 0], 40 * plain_labels.numpy() + 20, atol=1)

    other = tmp_path / "missing_class"
    build_tiny(other, {"train": [30, 10, 10, 0, 4]})
    config = config_for(other, balance__target="explicit", balance__shares=(0.2,) * 5)
    with pytest.raises(EffdrError, match=r"\[3\] a share but the training split has no examples"):
        pipeline.make_dataset(config, "train")


def test_evaluation_yields_every_example_exactly_once(eyepacs_like):
    data_dir, manifest = eyepacs_like
    ds = pipeline.make_dataset(config_for(data_dir), "test", return_metadata=True)
    ids, labels, sizes = [], [], []
    for images, batch_labels, meta in ds:
        ids += [i.decode() for i in meta["id"].numpy()]
        labels += batch_labels.numpy().tolist()
        sizes.append(images.shape[0])
    assert len(ids) == len(set(ids)) == manifest["splits"]["test"]["count"] == 50
    assert sizes[-1] == 50 % 7  # the last, partial batch is kept
    assert np.bincount(labels).tolist() == [20, 10, 10, 5, 5]


@pytest.mark.parametrize("num_shards", [4, 1])
def test_two_hosts_read_disjoint_parts_that_cover_the_split(tmp_path, num_shards):
    build_tiny(tmp_path, {"test": [9, 9, 9, 9, 9]}, num_shards=num_shards)
    config = config_for(tmp_path)
    config.data.eval_batch_size = 8
    seen = []
    for host in range(2):
        context = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=host, num_replicas_in_sync=2
        )
        ds = pipeline.make_dataset(config, "test", input_context=context, return_metadata=True)
        seen.append({i.decode() for _, _, m in ds for i in m["id"].numpy()})
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == 45 and min(len(s) for s in seen) > 0
    config.data.eval_batch_size = 7
    with pytest.raises(EffdrError, match="does not divide across 2 replicas"):
        pipeline.make_dataset(config, "test", input_context=context)


def test_missing_truncated_and_corrupt_shards(tmp_path):
    manifest = build_tiny(tmp_path, {"test": [40, 40, 40, 40, 40]}, num_shards=2)
    config = config_for(tmp_path)
    first, second = [tmp_path / s["name"] for s in manifest["splits"]["test"]["shards"]]

    data = bytearray(second.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped bit: same size, bad record
    second.write_bytes(bytes(data))
    with pytest.raises(EffdrError, match=f"{second}: sha256 differs"):
        pipeline.make_dataset(config_for(tmp_path, data__verify_shards="sha256"), "test")
    with pytest.raises(tf.errors.DataLossError):
        for _ in pipeline.make_dataset(config, "test"):
            pass
    assert pipeline.find_corrupt_shards(str(tmp_path), "test") == [str(second)]
    skipping = config_for(tmp_path, data__skip_corrupt=True)
    seen = sum(int(b[0].shape[0]) for b in pipeline.make_dataset(skipping, "test"))
    assert manifest["splits"]["test"]["shards"][0]["count"] <= seen < 200  # counted as missing

    first.write_bytes(first.read_bytes()[:-10])
    with pytest.raises(EffdrError, match=f"{first}: .* bytes, the manifest says"):
        pipeline.make_dataset(config, "test")
    os.remove(first)
    with pytest.raises(EffdrError, match=f"{first}: shard listed in the manifest is missing"):
        pipeline.make_dataset(config, "test")
    with pytest.raises(EffdrError, match="manifest.json: not found"):
        pipeline.make_dataset(config_for(tmp_path / "nowhere"), "test")


def test_deterministic_mode_repeats_exactly(eyepacs_like):
    data_dir, _ = eyepacs_like
    config = config_for(data_dir, data__deterministic=True, balance__target="sqrt")
    a = [x.numpy() for x, _ in pipeline.make_dataset(config, "train").take(3)]
    b = [x.numpy() for x, _ in pipeline.make_dataset(config, "train").take(3)]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_normalization_presets_in_the_pipeline(eyepacs_like):
    data_dir, _ = eyepacs_like
    raw = config_for(data_dir)
    norm = config_for(data_dir, data__normalization="inception")
    x = next(iter(pipeline.make_dataset(raw, "test")))[0].numpy()
    y = next(iter(pipeline.make_dataset(norm, "test")))[0].numpy()
    np.testing.assert_allclose(y, x / 127.5 - 1.0, atol=1e-5)


def test_hosts_partition_a_class_that_has_fewer_shards_than_hosts(tmp_path):
    manifest = build_tiny(tmp_path, {"train": [9, 7, 6, 6, 6]})
    config = config_for(tmp_path)
    shards = pipeline.split_shards(str(tmp_path), "train", manifest=manifest)
    hosts = 3
    per_host = []
    for host in range(hosts):
        context = tf.distribute.InputContext(
            num_input_pipelines=hosts, input_pipeline_id=host, num_replicas_in_sync=hosts
        )
        # Each host mixes with its own seed (make_dataset's), as in training.
        streams = pipeline.class_streams(shards, 5, context, config, seed=7919 * host)
        ids = {}
        for c, stream in streams.items():
            # Several passes (the streams repeat, and shuffle across pass boundaries).
            ids[c] = [
                pipeline.parse(r)[constants.FEATURE_ID].numpy().decode() for r in stream.take(40)
            ]
        per_host.append(ids)
    for c in range(5):
        class_shards = [s for s in shards if s["class_counts"].get(str(c))]
        assert len(class_shards) < hosts
        parts = [set(ids[c]) for ids in per_host]
        assert all(parts) and sum(len(p) for p in parts) == len(set.union(*parts))  # disjoint
        assert len(set.union(*parts)) == manifest["splits"]["train"]["class_counts"][str(c)]

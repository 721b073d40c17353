"""Weight import from every supported checkpoint family, offline, and its failure modes."""

import json
import os
import pathlib
import shutil

import h5py
import keras
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from effdr_tf import models
from effdr_tf.errors import EffdrError, WeightsError
from effdr_tf.models import weights as weights_lib
from tests import memory, torch_reference
from tests.conftest import REPO, run_command

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def _predict(model, x):
    return np.asarray(model(np.asarray(x, np.float32), training=False))


# ---------------------------------------------------------------------------------------------
# Checkpoints of the PyTorch implementations (timm, efficientnet_pytorch), made for the run


@pytest.mark.parametrize(
    "checkpoint",
    [
        "timm_tf_efficientnet_b0_c5.safetensors",
        "effnet_pytorch_b0_c5.safetensors",
        "effnet_pytorch_b0_c5.pth",
    ],
)
def test_b0_reproduces_pytorch_logits(reference_dir, checkpoint):
    model = models.efficientnet(
        "b0", num_classes=5, weights=str(reference_dir / checkpoint), normalization="none"
    )
    x = np.load(reference_dir / "input_imagenet_norm_2x224x224x3.npy")
    want = np.load(reference_dir / f"{checkpoint.split('.')[0]}_logits.npy")
    assert np.abs(want[0] - want[1]).max() > 0.05  # the two photographs tell apart
    assert np.abs(_predict(model, x) - want).max() <= 1e-5 * np.abs(want).max() + 1e-4


_MODELS_BY_VARIANT = {}


def _model_for(variant, num_classes):
    key = (variant, num_classes)
    if key not in _MODELS_BY_VARIANT:
        _MODELS_BY_VARIANT[key] = models.build_efficientnet(
            variant, num_classes=num_classes, input_shape=(None, None, 3)
        )
    return _MODELS_BY_VARIANT[key]


@pytest.mark.parametrize("variant", [f"b{i}" for i in range(8)])
def test_every_reference_tensor_maps_with_matching_shape(reference_dir, variant):
    for family, layout in [
        ("effnet_pytorch", "efficientnet_pytorch"),
        ("timm_tf_efficientnet", "timm"),
    ]:
        shapes = json.loads((reference_dir / f"{family}_{variant}_shapes.json").read_text())
        rng = np.random.default_rng(0)
        tensors = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
        ckpt = weights_lib.Checkpoint(f"{family}_{variant}", layout, tensors)
        assert ckpt.guess_variant() == variant
        head = "_fc.weight" if layout == "efficientnet_pytorch" else "classifier.weight"
        model = _model_for(variant, shapes[head][0])
        summary = weights_lib.load_into(model, ckpt, models.architecture(variant))
        assert summary["head"] == "loaded"
        # Spot-check the layout conversion on the last block's depthwise kernel.
        last = models.architecture(variant).blocks[-1]
        dw_key = (
            f"_blocks.{len(models.architecture(variant).blocks) - 1}._depthwise_conv.weight"
            if layout == "efficientnet_pytorch"
            else f"blocks.{last.stage}.{last.index}.conv_dw.weight"
        )
        got = np.asarray(model.get_layer(f"{last.name}dwconv").weights[0])
        np.testing.assert_array_equal(got, tensors[dw_key].transpose(2, 3, 0, 1))
    _MODELS_BY_VARIANT.clear()


def test_real_lite0_imagenet_checkpoint(reference_dir, lite0_pth):
    ckpt = weights_lib.read_checkpoint(lite0_pth)
    assert ckpt.normalization() == "inception"
    assert ckpt.guess_variant() == "lite0"
    model = models.efficientnet("lite0", num_classes=1000, weights=lite0_pth, normalization="none")
    x = np.load(reference_dir / "lite0_input_2x224x224x3.npy")
    want = np.load(reference_dir / "lite0_logits.npy")
    got = _predict(model, x)
    assert np.abs(got - want).max() <= 1e-3
    top5 = torch_reference.LITE0_TOP5
    assert np.argsort(-got, axis=1)[:, :5].tolist() == [top5["chelsea"], top5["coffee"]]
    assert got.argmax(1).tolist() == [285, 967]  # Egyptian cat, espresso


def test_lite0_with_auto_normalization_takes_pixels(reference_dir, lite0_pth):
    """normalization="auto" builds the [-1, 1] scaling in: feed pixels, get the same logits."""
    model = models.efficientnet("lite0", num_classes=1000, weights=lite0_pth)
    x = np.load(reference_dir / "lite0_input_2x224x224x3.npy")
    pixels = (x * 0.5 + 0.5) * 255.0
    want = np.load(reference_dir / "lite0_logits.npy")
    assert np.abs(_predict(model, pixels) - want).max() <= 1e-3


# ---------------------------------------------------------------------------------------------
# Keras-applications files


def _keras_imagenet_like_file(path, include_top=True, input_shape=(64, 64, 3)):
    """A keras.applications B0 with random weights, saved in the legacy HDF5 layout of the
    downloadable ImageNet files, whose Normalization layer holds the std as its variance."""
    from keras.src.legacy.saving import legacy_h5_format

    ref = keras.applications.EfficientNetB0(
        weights=None, include_top=include_top, input_shape=input_shape, classifier_activation=None
    )
    rng = np.random.default_rng(0)
    for layer in ref.layers:
        if isinstance(layer, keras.layers.Normalization):
            layer.set_weights([IMAGENET_MEAN, IMAGENET_STD, np.array(0)])
        elif layer.weights:
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, w.shape)
                    if "variance" in w.path
                    else rng.normal(0, 0.1, w.shape) + ("gamma" in w.path)
                    for w in layer.weights
                ]
            )
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, ref)
    return ref


def _as_keras_imagenet_sees(pixels):
    """Input that makes a model loaded by path (missing the 1/sqrt(std) Rescaling) compute
    the true ImageNet normalisation (x/255 - mean) / std."""
    x = pixels / 255.0
    return (IMAGENET_MEAN + (x - IMAGENET_MEAN) / np.sqrt(IMAGENET_STD)) * 255.0


def test_keras_applications_imagenet_file_by_path_and_cache(tmp_path, monkeypatch):
    path = tmp_path / "efficientnetb0.h5"
    ref = _keras_imagenet_like_file(path)
    ckpt = weights_lib.read_checkpoint(str(path))
    assert ckpt.layout == "keras" and ckpt.normalization() == "imagenet"
    pixels = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3))
    want = _predict(ref, _as_keras_imagenet_sees(pixels))

    ours = models.efficientnet("b0", num_classes=1000, input_shape=(64, 64, 3), weights=str(path))
    assert np.abs(_predict(ours, pixels) - want).max() <= 1e-4 * np.abs(want).max()

    # The same file found in the Keras cache folder.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    with pytest.raises(WeightsError, match="efficientnetb0.h5 is not in"):
        models.efficientnet("b0", num_classes=1000, weights="imagenet")
    (tmp_path / "keras_home" / "models").mkdir(parents=True)
    shutil.copy(path, tmp_path / "keras_home" / "models" / "efficientnetb0.h5")
    cached = models.efficientnet(
        "b0", num_classes=1000, input_shape=(64, 64, 3), weights="imagenet"
    )
    np.testing.assert_allclose(_predict(cached, pixels), _predict(ours, pixels), atol=1e-6)


def test_keras_notop_file_and_head_handling(tmp_path):
    path = tmp_path / "efficientnetb0_notop.h5"
    ref = _keras_imagenet_like_file(path, include_top=False)
    pixels = np.random.default_rng(2).uniform(0, 255, (1, 64, 64, 3))
    want = _predict(ref, _as_keras_imagenet_sees(pixels))
    ours = models.efficientnet("b0", input_shape=(64, 64, 3), include_top=False, weights=str(path))
    assert np.abs(_predict(ours, pixels) - want).max() <= 1e-4 * np.abs(want).max()
    with pytest.raises(WeightsError, match="no classifier"):
        models.efficientnet("b0", num_classes=5, input_shape=(64, 64, 3), weights=str(path))
    headed = models.efficientnet(
        "b0", num_classes=5, input_shape=(64, 64, 3), weights=str(path), reinit_head=True
    )
    np.testing.assert_array_equal(
        headed.get_layer("top_conv").get_weights()[0], ref.get_layer("top_conv").get_weights()[0]
    )


def test_keras3_weights_file_and_keras_archive(tmp_path):
    """Files saved by Keras 3 (model.save_weights, model.save) of a keras.applications model."""
    ref = keras.applications.EfficientNetB0(
        weights=None, input_shape=(64, 64, 3), classifier_activation=None
    )
    ref.save_weights(tmp_path / "ref.weights.h5")
    ref.save(tmp_path / "ref.keras")
    pixels = np.random.default_rng(3).uniform(0, 255, (1, 64, 64, 3))
    want = _predict(ref, pixels)
    for name in ("ref.weights.h5", "ref.keras"):
        ckpt = weights_lib.read_checkpoint(str(tmp_path / name))
        assert ckpt.normalization() == "unit"  # Normalization never adapted: x / 255
        ours = models.efficientnet(
            "b0", num_classes=1000, input_shape=(64, 64, 3), weights=str(tmp_path / name)
        )
        assert np.abs(_predict(ours, pixels) - want).max() <= 1e-4 * np.abs(want).max()


# ---------------------------------------------------------------------------------------------
# Conversion, head handling, normalisation hints, remote paths


def test_convert_round_trip_records_variant_and_normalization(reference_dir, tmp_path):
    src = str(reference_dir / "timm_tf_efficientnet_b0_c5.safetensors")
    dst = str(tmp_path / "b0.weights.h5")
    info = models.convert(src, dst)  # variant detected from the shapes
    assert info["variant"] == "b0" and info["num_classes"] == 5
    assert info["normalization"] == "imagenet" and info["family"] == "timm"
    assert sorted(os.listdir(tmp_path)) == ["b0.weights.h5"]  # no temporary left behind
    ckpt = weights_lib.read_checkpoint(dst)
    assert ckpt.family == "effdr_tf" and ckpt.metadata["variant"] == "b0"
    model = models.efficientnet("b0", num_classes=5, weights=dst, normalization="none")
    x = np.load(reference_dir / "input_imagenet_norm_2x224x224x3.npy")
    want = np.load(reference_dir / "timm_tf_efficientnet_b0_c5_logits.npy")
    assert np.abs(_predict(model, x) - want).max() <= 1e-3
    with pytest.raises(WeightsError, match=r"efficientnet-b1, it looks like efficientnet-b0"):
        models.efficientnet("b1", num_classes=5, weights=dst)
    with pytest.raises(WeightsError, match=r"must end in \.weights\.h5"):
        models.convert(src, str(tmp_path / "b0.h5"))


def test_other_num_classes_needs_reinit_head(reference_dir):
    src = str(reference_dir / "effnet_pytorch_b0_c5.safetensors")
    with pytest.raises(WeightsError, match=r"5 classes.*reinit_head"):
        models.efficientnet("b0", num_classes=3, input_shape=(64, 64, 3), weights=src)
    model = models.efficientnet(
        "b0", num_classes=3, input_shape=(64, 64, 3), weights=src, reinit_head=True
    )
    stem = load_file(src)["_conv_stem.weight"].transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(model.get_layer("stem_conv").get_weights()[0], stem)
    assert model.output_shape == (None, 3)
    headless = models.efficientnet("b0", input_shape=(64, 64, 3), include_top=False, weights=src)
    assert headless.output_shape == (None, 2, 2, 1280)


@pytest.mark.parametrize(
    "relative, expected",
    [
        ("adv-efficientnet-b0-b64d5a18.safetensors", "inception"),
        ("tf_efficientnet_b0_ap-f262efe1.safetensors", "inception"),
        ("tf_efficientnet_b0.ap_in1k/model.safetensors", "inception"),
        ("tf_efficientnet_b0.ns_jft_in1k/model.safetensors", "imagenet"),
        ("tf_efficientnet_b0_ns-c0e6a31c.safetensors", "imagenet"),
        ("efficientnet-b0-355c32eb.safetensors", "imagenet"),
    ],
)
def test_family_normalization_from_published_names(reference_dir, tmp_path, relative, expected):
    path = tmp_path / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(reference_dir / "timm_tf_efficientnet_b0_c5.safetensors", path)
    assert weights_lib.read_checkpoint(str(path)).normalization() == expected


def test_every_tensor_is_placed_or_named(reference_dir, tmp_path):
    tensors = load_file(str(reference_dir / "timm_tf_efficientnet_b0_c5.safetensors"))
    broken = dict(tensors)
    del broken["blocks.3.1.conv_pwl.weight"]
    broken["blocks.9.0.conv_pw.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    broken["conv_head.weight"] = np.zeros((1280, 321, 1, 1), np.float32)
    save_file(broken, str(tmp_path / "broken.safetensors"))
    with pytest.raises(WeightsError) as err:
        models.efficientnet("b0", num_classes=5, weights=str(tmp_path / "broken.safetensors"))
    message = str(err.value)
    assert "\n" not in message
    assert "1 with wrong shape: conv_head.weight" in message
    assert "1 missing: blocks.3.1.conv_pwl.weight" in message
    assert "1 unexpected: blocks.9.0.conv_pw.weight" in message


def _huge_weights_h5(path):
    """A Keras 3 .weights.h5 of a few KB declaring one 30000 x 30000 float32 variable (3.6 GB):
    unwritten chunks of a chunked dataset cost nothing on disk and read as the fill value."""
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "layers/stem_conv/vars/0", shape=(30000, 30000), dtype="f4", chunks=(1000, 1000)
        )


def test_declared_sizes_are_checked_before_any_tensor_is_read(tmp_path):
    import struct
    import zipfile

    _huge_weights_h5(tmp_path / "huge.weights.h5")
    header = {"conv_stem.weight": {"dtype": "F32", "shape": [40000, 40000], "data_offsets": [0, 4]}}
    blob = json.dumps(header).encode()
    (tmp_path / "huge.safetensors").write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(4))
    with zipfile.ZipFile(tmp_path / "bomb.keras", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("model.weights.h5", bytes(300 << 20))  # 300 MiB of zeros in about 300 KB
    cases = [
        ("huge.weights.h5", "stem_conv/vars/0 declares 900,000,000 values"),
        ("huge.safetensors", "conv_stem.weight declares 1,600,000,000 values"),
        ("bomb.keras", "declares 300 MiB of data in a 0.3 MiB file"),
    ]
    for name, expected in cases:
        with pytest.raises(WeightsError) as error:
            weights_lib.read_checkpoint(str(tmp_path / name))
        assert expected in str(error.value) and str(tmp_path / name) in str(error.value)
    # The same refusal in a process of its own, measured: the 3.6 GB are never allocated.
    script = (
        "import sys\n"
        "from effdr_tf.models import weights\n"
        "try:\n    weights.read_checkpoint(sys.argv[1])\n"
        "except weights.WeightsError as e:\n    print(e)\n"
    )
    result, peak = memory.run_measured(
        ["-c", script, str(tmp_path / "huge.weights.h5")], cwd=REPO, timeout=300
    )
    assert "declares 900,000,000 values" in result.stdout, result.stderr[-2000:]
    assert peak["largest_mib"] < 2048, f"peak RSS {peak['largest_mib']:.0f} MiB"


def test_pth_without_torch_says_what_to_install(lite0_pth, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(WeightsError, match=r"needs torch"):
        weights_lib.read_checkpoint(lite0_pth)


def test_remote_paths_go_through_tf_gfile(reference_dir):
    """gs:// and other URLs are read with tf.io.gfile; ram:// exercises the same path offline."""
    import tensorflow as tf

    url = "ram://checkpoints/timm_b0.safetensors"
    tf.io.gfile.makedirs("ram://checkpoints")
    with tf.io.gfile.GFile(url, "wb") as f:
        f.write((reference_dir / "timm_tf_efficientnet_b0_c5.safetensors").read_bytes())
    model = models.efficientnet("b0", num_classes=5, weights=url, normalization="none")
    x = np.load(reference_dir / "input_imagenet_norm_2x224x224x3.npy")
    want = np.load(reference_dir / "timm_tf_efficientnet_b0_c5_logits.npy")
    assert np.abs(_predict(model, x) - want).max() <= 1e-3
    info = models.convert(url, "ram://checkpoints/b0.weights.h5")
    assert info["variant"] == "b0" and tf.io.gfile.exists("ram://checkpoints/b0.weights.h5")
    with pytest.raises(EffdrError, match="ram://checkpoints/absent.pth: cannot read"):
        weights_lib.read_checkpoint("ram://checkpoints/absent.pth")


# ---------------------------------------------------------------------------------------------
# The command line: bad input gives one line, a non-zero exit and no output file


def _cli_error(result, path):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert str(path) in errors[0]
    return errors[0]


def test_convert_command_and_its_errors(reference_dir, lite0_pth, tmp_path):
    dst = tmp_path / "lite0.weights.h5"
    ok = run_command("-m", "effdr_tf.models.convert", "--variant=lite0", lite0_pth, str(dst))
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "efficientnet-lite0" in ok.stdout and "inception" in ok.stdout and dst.exists()

    src = reference_dir / "effnet_pytorch_b0_c5.safetensors"
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    truncated_pth = tmp_path / "truncated.pth"
    data = pathlib.Path(lite0_pth).read_bytes()
    truncated_pth.write_bytes(data[: len(data) // 3])
    not_a_checkpoint = tmp_path / "labels.csv"
    not_a_checkpoint.write_text("image,level\n10_left,0\n")
    cases = [
        (truncated, [], "corrupt or truncated"),
        (truncated_pth, [], "corrupt or truncated"),
        (src, ["--variant=b2"], "does not fit efficientnet-b2, it looks like efficientnet-b0"),
        (not_a_checkpoint, [], "not a checkpoint"),
        (tmp_path / "absent.pth", [], "no such file"),
    ]
    # One bad file through the command (exit code, one line, no traceback); the others through
    # the function it calls, which raises the line the command prints.
    path, flags, expected = cases[0]
    out = tmp_path / f"{path.stem}.weights.h5"
    result = run_command("-m", "effdr_tf.models.convert", *flags, str(path), str(out))
    assert expected in _cli_error(result, path)
    assert not out.exists()
    for path, flags, expected in cases[1:]:
        out = tmp_path / f"{path.stem}.weights.h5"
        variant = flags[0].split("=")[1] if flags else None
        with pytest.raises(EffdrError) as error:
            models.convert(str(path), str(out), variant=variant)
        assert expected in str(error.value) and str(path) in str(error.value)
        assert "\n" not in str(error.value)
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".weights.h5")) == [
        "lite0.weights.h5"
    ]


def test_keras_cache_dirs_follow_keras_home(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert weights_lib.keras_cache_dirs()[0] == os.path.join(str(tmp_path), "models")
    with pytest.raises(WeightsError, match="b0-b7 only"):
        weights_lib.keras_imagenet_file("lite0", include_top=True)

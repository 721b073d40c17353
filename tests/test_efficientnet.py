"""The EfficientNet builder against keras.applications and the reference architecture."""

import ast
import pathlib

import keras
import numpy as np
import pytest

from effdr_tf import models
from effdr_tf.errors import EffdrError
from effdr_tf.models import network as arch_lib
from tests.conftest import REPO, run_command

# keras.io parameter counts, which include the 7 weights of keras.applications' Normalization.
KERAS_PARAMS = {
    "b0": 5_330_571,
    "b1": 7_856_239,
    "b2": 9_177_569,
    "b3": 12_320_535,
    "b4": 19_466_823,
    "b5": 30_562_527,
    "b6": 43_265_143,
    "b7": 66_658_687,
}
SMALL = (64, 64, 3)


def _keras_application(variant: str, input_shape=SMALL, include_top=True):
    cls = getattr(keras.applications, f"EfficientNetB{variant[1:]}")
    return cls(
        weights=None, input_shape=input_shape, include_top=include_top, classifier_activation=None
    )


def _randomise(model, rng):
    """Random weights everywhere, BN moving statistics included, so a mis-mapping shows."""
    for layer in model.layers:
        if not layer.weights:
            continue
        new = []
        for w in layer.weights:
            shape = tuple(w.shape)
            if w.path.endswith("moving_variance"):
                new.append(rng.uniform(0.5, 1.5, shape))
            elif w.path.endswith(("gamma", "moving_mean", "beta")):
                new.append(rng.normal(0.0 if "gamma" not in w.path else 1.0, 0.1, shape))
            elif isinstance(layer, keras.layers.Normalization):
                new.append(np.asarray(w))
            else:
                new.append(rng.normal(0.0, np.sqrt(1.0 / max(1, np.prod(shape[:-1]))), shape))
        layer.set_weights([np.asarray(a, np.float32) for a in new])


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def copy_from_keras_application(theirs, ours):
    """Copies weights layer by layer, by name: our names are keras.applications'."""
    for layer in ours.layers:
        if layer.weights:
            layer.set_weights(theirs.get_layer(layer.name).get_weights())


@pytest.mark.parametrize("variant", list(KERAS_PARAMS))
def test_matches_keras_applications(variant):
    theirs = _keras_application(variant)
    ours = models.build_efficientnet(
        variant, num_classes=1000, input_shape=SMALL, normalization="unit"
    )
    assert theirs.count_params() == KERAS_PARAMS[variant]
    assert ours.count_params() == KERAS_PARAMS[variant] - 7

    rng = np.random.default_rng(0)
    _randomise(theirs, rng)
    copy_from_keras_application(theirs, ours)
    x = rng.uniform(0, 255, (2, *SMALL)).astype(np.float32)
    want = theirs(x, training=False).numpy()
    got = np.asarray(ours(x, training=False))
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())
    assert np.abs(softmax(got) - softmax(want)).max() <= 1e-5


def test_odd_input_size_matches_keras_applications():
    """TF SAME padding on odd sizes, where the pad falls on both sides."""
    shape = (67, 45, 3)
    theirs = _keras_application("b0", shape, include_top=False)
    ours = models.build_efficientnet(
        "b0", input_shape=shape, include_top=False, normalization="unit"
    )
    rng = np.random.default_rng(1)
    _randomise(theirs, rng)
    copy_from_keras_application(theirs, ours)
    x = rng.uniform(0, 255, (1, *shape)).astype(np.float32)
    want = theirs(x, training=False).numpy()
    got = np.asarray(ours(x, training=False))
    assert got.shape == want.shape == (1, 3, 2, 1280)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_scaling_table_golden_numbers():
    b7 = arch_lib.architecture("b7")
    assert (b7.stem_filters, len(b7.blocks), b7.head_filters) == (64, 55, 2560)
    assert arch_lib.architecture("b5").resolution == 456
    assert [len(arch_lib.architecture(f"b{i}").blocks) for i in range(8)] == [
        16,
        23,
        23,
        26,
        32,
        39,
        45,
        55,
    ]
    assert arch_lib.round_filters(32, 1.1) == 32  # rounds down less than 10 %
    assert arch_lib.round_filters(16, 1.4) == 24


def test_lite_family():
    for i in range(5):
        arch = arch_lib.architecture(f"lite{i}")
        assert arch.activation == "relu6"
        assert arch.stem_filters == 32 and arch.head_filters == 1280
        assert all(b.se_filters == 0 for b in arch.blocks)
        stages = [b.stage for b in arch.blocks]
        assert stages.count(0) == 1 and stages.count(6) == 1  # first and last stage unscaled
    lite4 = arch_lib.architecture("lite4")
    assert [b.stage for b in lite4.blocks].count(5) == 8  # ceil(1.8 * 4)
    model = models.build_efficientnet("lite4", input_shape=SMALL)
    names = [layer.name for layer in model.layers]
    assert not any("se_" in n for n in names)
    assert model.get_layer("stem_activation").activation.__name__ == "relu6"


def test_stochastic_depth_rises_linearly_on_skip_blocks():
    model = models.build_efficientnet("b1", input_shape=SMALL, drop_connect_rate=0.2)
    arch = arch_lib.architecture("b1")
    n = len(arch.blocks)
    for block in arch.blocks:
        names = {layer.name for layer in model.layers}
        if block.has_skip and block.position > 0:
            assert model.get_layer(f"{block.name}drop").rate == pytest.approx(
                0.2 * block.position / n
            )
        else:
            assert f"{block.name}drop" not in names
    assert model.get_layer("top_dropout").rate == 0.2


def test_options_shapes_and_bn_arguments():
    m = models.build_efficientnet("b0", input_shape=(None, None, 3), include_top=False)
    assert m.output_shape == (None, None, None, 1280)
    assert np.asarray(m(np.zeros((1, 512, 384, 3), np.float32))).shape == (1, 16, 12, 1280)
    m = models.build_efficientnet("b0", input_shape=(32, 32, 3), include_top=False, pooling="max")
    assert m.output_shape == (None, 1280)
    m = models.build_efficientnet("b0", input_shape=SMALL, bn_momentum=0.9, bn_epsilon=1e-5)
    assert m.get_layer("top_bn").momentum == 0.9 and m.get_layer("top_bn").epsilon == 1e-5
    m = models.build_efficientnet("b0", num_classes=5, input_shape=SMALL)
    assert m.output_shape == (None, 5)
    m = models.build_efficientnet(
        "b0", num_classes=5, input_shape=SMALL, classifier_activation="softmax"
    )
    out = np.asarray(m(np.random.default_rng(0).uniform(0, 255, (2, *SMALL))))
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-5)


def test_normalization_presets():
    m = models.build_efficientnet("b0", input_shape=(32, 32, 3), normalization="imagenet")
    layer = m.get_layer("input_normalization")
    mean = np.array([0.485, 0.456, 0.406]) * 255
    std = np.array([0.229, 0.224, 0.225]) * 255
    x = np.stack([mean, mean + std]).reshape(2, 1, 1, 3).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(layer(x)).reshape(2, 3), [[0, 0, 0], [1, 1, 1]], atol=1e-5
    )
    m = models.build_efficientnet("b0", input_shape=(32, 32, 3), normalization="inception")
    x = np.array([0.0, 255.0]).repeat(3).reshape(2, 1, 1, 3)
    y = np.asarray(m.get_layer("input_normalization")(x))
    np.testing.assert_allclose(y.reshape(2, 3), [[-1.0] * 3, [1.0] * 3], atol=1e-6)
    m = models.build_efficientnet("b0", input_shape=(32, 32, 3), normalization="none")
    assert "input_normalization" not in [layer.name for layer in m.layers]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"variant": "b9"}, "unknown EfficientNet variant"),
        ({"variant": "b0", "input_shape": (16, 16, 3)}, "at least 32"),
        ({"variant": "b0", "input_shape": (64, 64)}, "expected"),
        ({"variant": "b0", "include_top": False, "pooling": "sum"}, "pooling"),
        ({"variant": "b0", "normalization": "zscore"}, "unknown normalization"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, match):
    with pytest.raises(EffdrError, match=match):
        models.build_efficientnet(**kwargs)


def test_model_code_uses_keras_apis_only():
    """models/ must run under any Keras backend: no TensorFlow import anywhere in it."""
    for path in (REPO / "effdr_tf" / "models").glob("*.py"):
        tree = ast.parse(pathlib.Path(path).read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] == "tensorflow" for n in names), path


def test_runs_under_jax_backend(reference_dir):
    """Under KERAS_BACKEND=jax, B0 with the timm fixture reproduces its logits, TF unloaded."""
    code = f"""
import sys, numpy as np, keras
from effdr_tf import models
assert keras.backend.backend() == "jax"
m = models.efficientnet("b0", num_classes=5, normalization="none",
                        weights="{reference_dir}/timm_tf_efficientnet_b0_c5.safetensors")
x = np.load("{reference_dir}/input_imagenet_norm_2x224x224x3.npy")
want = np.load("{reference_dir}/timm_tf_efficientnet_b0_c5_logits.npy")
got = m.predict(x, verbose=0)
print("maxdiff", float(np.abs(got - want).max()))
print("tensorflow loaded", "tensorflow" in sys.modules)
"""
    result = run_command("-c", code, env={"KERAS_BACKEND": "jax"})
    assert result.returncode == 0, result.stderr[-2000:]
    diff = float(result.stdout.split("maxdiff")[1].split()[0])
    assert diff <= 1e-3
    assert "tensorflow loaded False" in result.stdout

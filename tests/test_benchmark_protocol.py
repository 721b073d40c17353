"""Benchmark protocols and their statistics: the hash follows the settings, contradicting flags
are refused, Holm's adjustment, the hierarchical bootstrap, the own-eye control stage, and the
comparison tables assembled from fake per-seed predictions (no training)."""

import json

import numpy as np
import pytest

from benchmarks import grading_methods, paired, self_training
from benchmarks import protocol as protocols
from effdr_tf.errors import EffdrError
from effdr_tf.evaluation import fellow_eye, metrics

K = 5


def _write(tmp_path, name, value):
    path = tmp_path / name
    path.write_text(json.dumps(value, indent=1))
    return str(path)


def test_hash_changes_with_a_setting_and_flags_that_contradict_are_refused(tmp_path):
    protocol, _ = protocols.load(protocols.default_path("grading_methods"))
    a = _write(tmp_path, "a.json", protocol)
    same = _write(tmp_path, "same.json", protocol)
    changed = json.loads(json.dumps(protocol))
    changed["data"]["num_images"] += 2
    b = _write(tmp_path, "b.json", changed)
    (pa, ha), (_, hs), (_, hb) = protocols.load(a), protocols.load(same), protocols.load(b)
    assert ha == hs and ha != hb and len(ha) == 64

    n = pa["data"]["num_images"]
    agreeing = grading_methods.overrides({"num_images": n, "image_size": None})
    protocols.check_overrides(pa, a, agreeing)  # a flag equal to the protocol is accepted
    with pytest.raises(EffdrError, match=r"a\.json: --num_images=.*contradicts.*--protocol"):
        protocols.check_overrides(pa, a, grading_methods.overrides({"num_images": n + 1}))
    st, _ = protocols.load(protocols.default_path("self_training"))
    with pytest.raises(EffdrError, match="contradicts"):
        protocols.check_overrides(
            st,
            "p",
            self_training.overrides({"teacher_epochs": st["training"]["teacher_epochs"] + 1}),
        )


def test_shipped_protocols_are_consistent_and_name_the_presets():
    for name, module in (("grading_methods", grading_methods), ("self_training", self_training)):
        path = protocols.default_path(name)
        protocol, _ = protocols.load(path)
        protocols.expect(protocol, path, name)
        module.check(protocol, path)
        assert protocol["data"]["presets"] == ["varied", "hard"]
        assert len(protocol["training"]["seeds"]) >= 3
        assert protocols.choose_preset(protocol, path, None) == "varied"
        with pytest.raises(EffdrError, match="not in the protocol's presets"):
            protocols.choose_preset(protocol, path, "standard")
    missing = {"data": {"presets": ["no_such_preset"]}}
    with pytest.raises(EffdrError, match="x.json: synthetic preset 'no_such_preset' does not"):
        protocols.choose_preset(missing, "x.json", None)
    with pytest.raises(EffdrError, match="not for 'self_training'"):
        protocols.expect({"benchmark": "grading_methods"}, "x.json", "self_training")


def test_holm_matches_the_definition():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # By hand: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04; the
    # running maximum makes the last 0.06.
    np.testing.assert_allclose(protocols.holm(p), [0.03, 0.06, 0.06, 0.02])
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = rng.uniform(0, 0.3, 7)
        m, order = len(q), np.argsort(q)
        rank = np.empty(m, int)
        rank[order] = np.arange(m)
        by_definition = [
            max(min(1.0, (m - rank[j]) * q[j]) for j in range(m) if rank[j] <= rank[i])
            for i in range(m)
        ]
        np.testing.assert_allclose(protocols.holm(q), by_definition)


def test_bootstrap_p_value():
    assert protocols.bootstrap_p(np.full(100, 0.3)) == 0.0
    assert protocols.bootstrap_p(np.r_[np.full(90, 0.3), np.full(10, -0.1)]) == pytest.approx(0.2)
    assert protocols.bootstrap_p(np.r_[np.ones(50), -np.ones(50)]) == 1.0


def test_weighted_figures_match_the_plain_ones_on_a_resample():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, K, 200)
    grades = np.clip(labels + rng.integers(-1, 2, 200), 0, K - 1)
    idx = rng.integers(0, 200, 200)
    counts = np.bincount(idx, minlength=200).astype(float)
    plain = paired.kappa(labels[idx], grades[idx])
    assert protocols.weighted_kappa(labels, grades, counts, K) == pytest.approx(plain)
    from sklearn.metrics import roc_auc_score

    scores = np.round(labels + rng.normal(0, 1.5, 200), 1)  # with ties
    auc = roc_auc_score(labels[idx] >= 2, scores[idx])
    assert protocols.weighted_auc(labels >= 2, scores, counts) == pytest.approx(auc)


def _test_set(n_patients=150, seed=0):
    rng = np.random.default_rng(seed)
    grades = rng.choice(K, n_patients, p=[0.45, 0.15, 0.2, 0.12, 0.08])
    labels = np.repeat(grades, 2)
    patients = np.repeat([f"p{i}" for i in range(n_patients)], 2)
    eyes = np.tile(["right", "left"], n_patients)
    return labels, patients, eyes


def _probs(labels, rng, noise):
    logits = -0.8 * (np.arange(K) - labels[:, None]) ** 2 + rng.normal(0, noise, (len(labels), K))
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_hierarchical_bootstrap_widens_when_seeds_disagree_and_is_the_patient_one_when_they_agree():
    labels, patients, _ = _test_set()
    rng = np.random.default_rng(2)
    base = _probs(labels, rng, 1.5)
    better = _probs(labels, rng, 1.0)
    arm = lambda p: (p.argmax(1), p)  # noqa: E731
    agree = protocols.compare(
        labels, patients, [arm(base)] * 3, [arm(better)] * 3, rounds=300, seed=0
    )
    patient_only = protocols.compare(labels, patients, [arm(base)], [arm(better)], rounds=300)
    assert agree["kappa"]["interval_95"] == patient_only["kappa"]["interval_95"]
    assert agree["auc"]["interval_95"] == patient_only["auc"]["interval_95"]
    # Seeds whose models differ: one much better, one worse than the base.
    others = [arm(_probs(labels, rng, s)) for s in (0.3, 1.0, 2.5)]
    disagree = protocols.compare(labels, patients, [arm(base)] * 3, others, rounds=300, seed=0)
    width = lambda c: np.diff(c["kappa"]["interval_95"])[0]  # noqa: E731
    assert width(disagree) > 1.5 * width(agree)
    assert len(disagree["kappa"]["per_seed"]) == 3
    assert len(set(np.round(disagree["kappa"]["per_seed"], 6))) == 3


def _eyes(n_patients, rng, informative):
    """Per patient a grade; an eye's grade is the patient's (informative fellow eye) or drawn on
    its own; each eye's probabilities are an overconfident, noisy view of its grade."""
    shares = [0.45, 0.15, 0.2, 0.12, 0.08]
    grades = rng.choice(K, n_patients, p=shares)
    labels = np.repeat(grades, 2) if informative else rng.choice(K, 2 * n_patients, p=shares)
    patients = np.repeat([f"p{i}" for i in range(n_patients)], 2)
    eyes = np.tile(["right", "left"], n_patients)
    logits = 3 * (
        -0.8 * (np.arange(K) - labels[:, None]) ** 2 + rng.normal(0, 2.0, (len(labels), K))
    )
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True), labels, patients, eyes


def _stage_kappa(informative, own_only, seed=3):
    rng = np.random.default_rng(seed)
    pv, yv, patv, eyev = _eyes(600, rng, informative)
    pt, yt, patt, eyet = _eyes(1500, rng, informative)
    stage = fellow_eye.fit(pv, yv, patv, eyev, own_only=own_only)
    out = stage.apply(pt, patt, eyet)
    return metrics.quadratic_weighted_kappa(metrics.confusion_matrix(yt, out.argmax(1), K))


def test_own_eye_stage_isolates_what_the_fellow_eye_adds():
    fellow, own = _stage_kappa(True, False), _stage_kappa(True, True)
    assert fellow > own + 0.02
    fellow_none, own_none = _stage_kappa(False, False), _stage_kappa(False, True)
    assert abs(fellow_none - own_none) < 0.015
    # Both recalibrate: the own-eye stage alone is the control for that.
    rng = np.random.default_rng(3)
    pv, yv, patv, eyev = _eyes(600, rng, False)
    stage = fellow_eye.fit(pv, yv, patv, eyev, own_only=True)
    again = fellow_eye.Stage.from_json(json.loads(json.dumps(stage.to_json())))
    assert again.own_only
    np.testing.assert_allclose(again.apply(pv, patv, eyev), stage.apply(pv, patv, eyev), atol=1e-9)
    oof = fellow_eye.out_of_fold(pv, yv, patv, eyev, own_only=True)
    assert oof.shape == pv.shape and not np.allclose(oof, pv)


def test_early_stopping_rule_and_labelled_budget():
    assert not grading_methods.should_stop([], 2, 8)
    assert not grading_methods.should_stop([0.5, 0.6, 0.6], 2, 8)  # a tie does not improve
    assert grading_methods.should_stop([0.5, 0.6, 0.6, 0.55], 2, 8)
    assert grading_methods.should_stop([0.1 * i for i in range(8)], 2, 8)
    assert not grading_methods.should_stop([0.0, 0.0, 0.0], 2, 8, min_epochs=4)
    assert grading_methods.should_stop([0.0, 0.0, 0.0, 0.0], 2, 8, min_epochs=4)
    w = self_training.withhold_fraction(0.2, 0.08)
    assert 0.08 + (1 - 0.08) * (1 - w) == pytest.approx(0.2)
    with pytest.raises(EffdrError, match="validation is part of the labelled budget"):
        self_training.withhold_fraction(0.1, 0.2, "p.json")


def test_grading_methods_table_from_fake_predictions():
    protocol, _ = protocols.load(protocols.default_path("grading_methods"))
    protocol["statistics"]["rounds"] = 100
    labels, patients, eyes = _test_set(120)
    rng = np.random.default_rng(4)
    noise = {"softmax": 1.6, "regression": 1.2, "ordinal": 1.4}

    def split(head, n_labels):
        y = n_labels
        return {
            "probabilities": _probs(y, rng, noise[head]),
            "labels": y,
            "patient_ids": patients,
            "eyes": eyes,
            "ids": np.array([f"{p}_{e}" for p, e in zip(patients, eyes, strict=True)]),
        }

    scored = {
        (head, seed, tta): {"validation": split(head, labels), "test": split(head, labels)}
        for head in protocol["training"]["heads"]
        for seed in protocol["training"]["seeds"]
        for tta in ("none", "dihedral")
    }
    table = grading_methods.assemble(protocol, scored)
    rows = {r["name"]: r for r in table["rows"]}
    assert list(rows) == [r["name"] for r in protocol["rows"]]
    compared = [r for r in rows.values() if r["versus"]]
    assert len(compared) == len(protocol["rows"]) - 1
    for r in compared:
        c = r["comparison"]["kappa"]
        assert len(c["per_seed"]) == len(protocol["training"]["seeds"])
        assert c["p"] <= c["p_holm"] <= 1
        assert c["interval_95"][0] <= c["interval_95"][1]
    # The argmax rows' per-seed kappas are those of the fake predictions themselves.
    first = [scored["regression", s, "none"]["test"] for s in protocol["training"]["seeds"]]
    expected = [paired.kappa(labels, f["probabilities"].argmax(1)) for f in first]
    np.testing.assert_allclose(rows["regression, rounded"]["kappa_per_seed"], expected)
    assert "p Holm" in protocols.markdown(table["rows"])
    scored["softmax", 0, "none"]["test"]["ids"] = scored["softmax", 0, "none"]["test"]["ids"][::-1]
    with pytest.raises(ValueError, match="different orders"):
        grading_methods.assemble(protocol, scored)


def test_self_training_table_from_fake_predictions():
    protocol, _ = protocols.load(protocols.default_path("self_training"))
    protocol["statistics"]["rounds"] = 100
    labels, patients, eyes = _test_set(120)
    rng = np.random.default_rng(5)
    noise = {"teacher": 1.8, "control": 1.6, "student1": 1.1}
    ids = np.array([f"{p}_{e}" for p, e in zip(patients, eyes, strict=True)])
    scored = {
        (arm, seed): {
            "probabilities": _probs(labels, rng, noise[arm]),
            "labels": labels,
            "patient_ids": patients,
            "ids": ids,
        }
        for arm in self_training.arm_names(protocol)
        for seed in protocol["training"]["seeds"]
    }
    table = self_training.assemble(protocol, scored)
    rows = {r["name"]: r for r in table["rows"]}
    paired_row = rows["student, round 1 - control"]
    seeds = protocol["training"]["seeds"]
    by_hand = [
        paired.kappa(labels, scored["student1", s]["probabilities"].argmax(1))
        - paired.kappa(labels, scored["control", s]["probabilities"].argmax(1))
        for s in seeds
    ]
    np.testing.assert_allclose(paired_row["comparison"]["kappa"]["per_seed"], by_hand)
    assert paired_row["comparison"]["kappa"]["difference"] == pytest.approx(np.mean(by_hand))
    assert paired_row["comparison"]["kappa"]["difference"] > 0
    assert self_training.control_epochs(protocol) == round(
        protocol["training"]["student_epochs"] / (1 - protocol["training"]["pseudo_fraction"])
    )


def test_every_head_gets_the_protocols_classifier_initializer(monkeypatch):
    from effdr_tf.models import heads

    monkeypatch.setattr(heads, "kernel_initializer", heads.kernel_initializer)  # restored after
    assert heads.kernel_initializer("softmax") != heads.kernel_initializer("regression")
    protocol, _ = protocols.load(protocols.default_path("grading_methods"))
    spec = protocol["model"]["classifier_initializer"]
    grading_methods._same_classifier_initializer(spec)
    for head in protocol["training"]["heads"]:
        assert heads.kernel_initializer(head) == spec

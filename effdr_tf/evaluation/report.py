"""report.html: the evaluation's tables and figures on one page a browser opens offline.

Figures are PNG files beside the page (relative links), so the folder can be zipped, copied
or served as it is.
"""

from __future__ import annotations

import html

# Published figures to read ours against (real data): the thesis's tables, the Kaggle 2015 and
# APTOS 2019 leaderboards, and Gulshan et al. 2016, JAMA 316(22):2402-2410.
REFERENCE_RESULTS = (
    ("thesis EfficientNet-B5-ns, Kaggle 2015", "accuracy 87.08 % public / 85.81 % private"),
    ("thesis B5-ns with BalancedSampler + RandAugment", "accuracy 82.84 % / 81.60 %"),
    ("thesis B5-ns on APTOS 2019 train, no fine-tuning", "accuracy 74.25 %"),
    ("always predicting grade 0 on EyePACS", "accuracy ≈ 73.5 %"),
    ("Kaggle 2015 winner", "quadratic weighted kappa ≈ 0.85 (private)"),
    ("APTOS 2019 strong single EfficientNet", "quadratic weighted kappa 0.917–0.925 (private)"),
    (
        "Gulshan et al. 2016, referable DR (EyePACS-1)",
        "AUC 0.991; sensitivity/specificity 90.3/98.1 % and 97.5/93.4 %",
    ),
)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; padding: 0 1.5em; max-width: 70em;
       color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
img { max-width: 32%; margin: 0.3em; border: 1px solid #eee; }
.note { color: #555; font-size: 0.9em; }
.warn { background: #fff4d6; border: 1px solid #b9a38a; padding: 0.4em 1em; }
#missing { display: none; background: #fde8e8; border: 1px solid #c33; padding: 0.5em 1em; }
"""

# After loading, the page counts its figures that decoded (body data-figures-loaded="k/n") and
# shows a warning when some did not, e.g. when report.html was copied without its PNG files.
LOAD_CHECK = """
window.addEventListener("load", () => {
  const figures = Array.from(document.images);
  const loaded = figures.filter((img) => img.complete && img.naturalWidth > 0).length;
  document.body.dataset.figuresLoaded = loaded + "/" + figures.length;
  if (loaded < figures.length) {
    const box = document.getElementById("missing");
    box.textContent = (figures.length - loaded) + " of " + figures.length +
      " figures could not be loaded: keep the PNG files beside report.html.";
    box.style.display = "block";
  }
});
"""


def _num(value, digits=3, percent=False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f} %" if percent else f"{value:.{digits}f}"


def _table(header, rows) -> str:
    head = "".join(f'<th class="l">{html.escape(h)}</th>' if i == 0 else f"<th>{html.escape(h)}"
                   "</th>" for i, h in enumerate(header))  # fmt: skip
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="l">{html.escape(str(c))}</td>'
            if i == 0
            else f"<td>{html.escape(str(c))}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _ci(interval, percent=False) -> str:
    if not interval:
        return ""
    if percent:
        return f" ({100 * interval[0]:.1f}–{100 * interval[1]:.1f} %)"
    return f" ({interval[0]:.3f}–{interval[1]:.3f})"


def _warnings(items) -> str:
    if not items:
        return ""
    return '<div class="warn">' + "".join(f"<p>{html.escape(w)}</p>" for w in items) + "</div>"


def _point_rows(referable: dict, unit: str) -> list:
    rows = []
    for point, values in (referable.get("operating_points") or {}).items():
        how = ", out-of-fold" if values.get("out_of_fold") else ""
        rows.append(
            (
                f"{point.replace('_', '-')} point, {unit} (threshold {values['threshold']:.3f}"
                f"{how})",
                f"sensitivity {_num(values['sensitivity'], percent=True)}"
                f"{_ci(values.get('sensitivity_95'), True)}, specificity "
                f"{_num(values['specificity'], percent=True)}"
                f"{_ci(values.get('specificity_95'), True)}",
            )
        )
    return rows


def _split_section(name: str, result: dict, figures: dict, class_names) -> str:
    parts = [
        f"<h2>{html.escape(name)} ({result['count']} images of "
        f"{result.get('patients', result['count'])} patients)</h2>",
        _warnings(result.get("warnings")),
    ]
    boot = result.get("bootstrap_95") or {}
    rows = [
        ("accuracy (95 % CI)", _num(result["accuracy"], percent=True)
         + _ci(boot.get("accuracy"), True)),
        ("quadratic weighted kappa (95 % CI)", _num(result["kappa"]) + _ci(boot.get("kappa"))),
        ("expected calibration error (95 % CI)", _num(result["calibration"]["ece"])
         + _ci(boot.get("ece"))),
    ]  # fmt: skip
    referable = result.get("referable")
    if referable:
        auc = _num(referable["auc"]) + _ci(boot.get("referable_auc"))
        rows.append(("referable DR (grade ≥ 2) AUC (95 % CI)", auc))
        rows.append(("referable DR prevalence", _num(referable["prevalence"], percent=True)))
        rows += _point_rows(referable, "images")
    fitted = result.get("fitted_grades")
    if fitted:
        how = "out-of-fold" if fitted.get("out_of_fold") else "fitted elsewhere"
        rows.append(
            (
                f"kappa, grades at the cut points ({how})",
                f"{_num(fitted['kappa'])}{_ci(fitted.get('kappa_95'))} "
                f"({fitted['kappa'] - result['kappa']:+.3f} on argmax)",
            )
        )
    second = result.get("fellow_eye")
    if second:
        image = second["image"]
        how = ", out-of-fold" if second.get("out_of_fold") else ""
        rows.append(
            (
                f"with the fellow eye ({second['images_with_fellow_eye']} images have one{how})",
                f"kappa {_num(image['kappa'])}{_ci(image.get('kappa_95'))} "
                f"({image['kappa'] - result['kappa']:+.3f}), at cut points "
                f"{_num(image.get('kappa_fitted_cut_points'))}"
                f"{_ci(image.get('kappa_fitted_cut_points_95'))}, referable AUC "
                f"{_num(image['referable_auc'])}{_ci(image.get('referable_auc_95'))}",
            )
        )
        if second.get("patient"):
            p, single = second["patient"], second["patient_single_image"]
            rows.append(
                (
                    "patients (worse eye), single image → with fellow eye",
                    f"kappa {_num(single['kappa'])}{_ci(single.get('kappa_95'))} → "
                    f"{_num(p['kappa'])}{_ci(p.get('kappa_95'))}, referable AUC "
                    f"{_num(single['referable_auc'])}{_ci(single.get('referable_auc_95'))} → "
                    f"{_num(p['referable_auc'])}{_ci(p.get('referable_auc_95'))}",
                )
            )
    parts.append(_table(("measure", "value"), rows))
    parts.append(
        "<p>"
        + "".join(
            f'<img src="{html.escape(path)}" alt="{html.escape(label)}">'
            for label, path in figures.items()
        )
        + "</p>"
    )
    pc = result["per_class"]
    parts.append(
        _table(
            ("grade", "support", "precision", "sensitivity", "specificity", "F1", "ROC AUC", "AP"),
            [
                (
                    f"{c} {class_names[c]}",
                    pc["support"][c],
                    _num(pc["precision"][c]),
                    _num(pc["sensitivity"][c]),
                    _num(pc["specificity"][c]),
                    _num(pc["f1"][c]),
                    _num(result["roc_auc"][c]),
                    _num(result["average_precision"][c]),
                )
                for c in range(len(pc["support"]))
            ],
        )
    )
    patient = result.get("patient_level")
    if patient:
        pboot = patient.get("bootstrap_95") or {}
        prows = [
            ("accuracy (95 % CI)", _num(patient["accuracy"], percent=True)
             + _ci(pboot.get("accuracy"), True)),
            ("quadratic weighted kappa (95 % CI)", _num(patient["kappa"])
             + _ci(pboot.get("kappa"))),
        ]  # fmt: skip
        if patient.get("referable"):
            prows.append(("referable DR AUC (95 % CI)", _num(patient["referable"]["auc"])
                          + _ci(pboot.get("referable_auc"))))  # fmt: skip
            prows += _point_rows(patient["referable"], "patients")
        pfitted = patient.get("fitted_grades")
        if pfitted:
            how = "out-of-fold" if pfitted.get("out_of_fold") else "fitted elsewhere"
            prows.append((f"kappa at the patient cut points ({how})",
                          _num(pfitted["kappa"]) + _ci(pfitted.get("kappa_95"))))  # fmt: skip
        parts.append(
            f"<h3>Patient level ({patient['count']} patients, worse eye)</h3>"
            + _warnings(patient.get("warnings"))
            + f'<p class="note">{html.escape(patient.get("eye", ""))}</p>'
            + _table(("measure", "value"), prows)
        )
    return "\n".join(parts)


def render(
    results: dict, figures: dict, provenance: dict, class_names, *, sections=(), warnings=()
) -> str:
    """The page.

    Args:
        results: split -> clinical.summarize output (with evaluate's additions).
        figures: split -> {label: relative path}.
        provenance: model and data facts shown at the top, and where each fitted thing was
            fitted.
        class_names: one name per grade.
        sections: (title, html_body) pairs appended as sections of their own; the body is
            HTML already escaped by whoever made it.
        warnings: lines shown in a box at the top (small splits, small fits).
    """
    extra = [f"<h2>{html.escape(title)}</h2>\n{body}" for title, body in sections]
    sections = [
        _split_section(split, result, figures.get(split, {}), class_names)
        for split, result in results.items()
    ] + extra
    facts = _table(("", ""), [(k, v) for k, v in provenance.items()])
    reference = _table(("published result (real data)", "figure"), REFERENCE_RESULTS)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>effdr_tf evaluation</title>
<style>{STYLE}</style></head><body>
<h1>Diabetic retinopathy grading: evaluation</h1>
<p id="missing"></p>
{_warnings(list(warnings))}
{facts}
<p class="note">Operating points are thresholds on P(grade ≥ 2) fitted on a validation split
(the highest reaching 97.5 % sensitivity, the lowest reaching 98.1 % specificity) and applied
unchanged to the other splits; nothing is fitted on the split it is reported on, and the
validation split's own figures at its points are out-of-fold (5 folds of patients, each read at
points fitted on the other 4). Intervals: 95 %
percentile bootstrap resampling patients (both eyes together; an image without a patient id
is its own cluster).</p>
{"".join(sections)}
<h2>Published results, for reference</h2>
<p class="note">These are other work's figures on real datasets, not results of this run.</p>
{reference}
<script>{LOAD_CHECK}</script>
</body></html>
"""

"""report.html: the evaluation's tables and figures on one page a browser opens offline.

Figures are PNG files beside the page (relative links), so the folder can be zipped, copied
or served as it is.
"""

from __future__ import annotations

import html

# Published figures to read ours against (real data; ANCHORS.md, with their sources there).
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


def _split_section(name: str, result: dict, figures: dict, class_names) -> str:
    parts = [f"<h2>{html.escape(name)} ({result['count']} images)</h2>"]
    boot = result.get("bootstrap_95") or {}
    ci = boot.get("kappa")
    kappa = _num(result["kappa"]) + (f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci else "")
    rows = [
        ("accuracy", _num(result["accuracy"], percent=True)),
        ("quadratic weighted kappa (95 % CI)", kappa),
        ("expected calibration error", _num(result["calibration"]["ece"])),
    ]
    referable = result.get("referable")
    if referable:
        ci = boot.get("referable_auc")
        auc = _num(referable["auc"]) + (f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci else "")
        rows.append(("referable DR (grade ≥ 2) AUC (95 % CI)", auc))
        rows.append(("referable DR prevalence", _num(referable["prevalence"], percent=True)))
        for point, values in referable.get("operating_points", {}).items():
            rows.append(
                (
                    f"{point.replace('_', '-')} point (threshold {values['threshold']:.3f})",
                    f"sensitivity {_num(values['sensitivity'], percent=True)}, "
                    f"specificity {_num(values['specificity'], percent=True)}",
                )
            )
    fitted = result.get("fitted_grades")
    if fitted:
        rows.append(
            (
                "kappa, grades at the cut points fitted on validation",
                f"{_num(fitted['kappa'])} ({fitted['kappa'] - result['kappa']:+.3f} on argmax)",
            )
        )
    second = result.get("fellow_eye")
    if second:
        image = second["image"]
        rows.append(
            (
                f"with the fellow eye ({second['images_with_fellow_eye']} images have one)",
                f"kappa {_num(image['kappa'])} ({image['kappa'] - result['kappa']:+.3f}), at "
                f"cut points {_num(image.get('kappa_fitted_cut_points'))}, referable AUC "
                f"{_num(image['referable_auc'])}",
            )
        )
        if second.get("patient"):
            p, single = second["patient"], second["patient_single_image"]
            rows.append(
                (
                    "patients (worse eye), single image → with fellow eye",
                    f"kappa {_num(single['kappa'])} → {_num(p['kappa'])}, referable AUC "
                    f"{_num(single['referable_auc'])} → {_num(p['referable_auc'])}",
                )
            )
    parts.append(_table(("measure", "value"), rows))
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
        parts.append(
            f"<p>Patient level ({patient['count']} patients, worse eye): accuracy "
            f"{_num(patient['accuracy'], percent=True)}, kappa {_num(patient['kappa'])}"
            + (
                f", referable AUC {_num(patient['referable']['auc'])}"
                if patient.get("referable")
                else ""
            )
            + "</p>"
        )
    parts.append(
        "".join(
            f'<img src="{html.escape(path)}" alt="{html.escape(label)}">'
            for label, path in figures.items()
        )
    )
    return "\n".join(parts)


def render(results: dict, figures: dict, provenance: dict, class_names) -> str:
    """The page. ``results``: split -> clinical.summarize output; ``figures``: split ->
    {label: relative path}; ``provenance``: model and data facts shown at the top."""
    sections = [
        _split_section(split, result, figures.get(split, {}), class_names)
        for split, result in results.items()
    ]
    facts = _table(("", ""), [(k, v) for k, v in provenance.items()])
    reference = _table(("published result (real data)", "figure"), REFERENCE_RESULTS)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>effdr_tf evaluation</title>
<style>{STYLE}</style></head><body>
<h1>Diabetic retinopathy grading: evaluation</h1>
<p id="missing"></p>
{facts}
<p class="note">Operating points are thresholds on P(grade ≥ 2) chosen on the validation split
(the highest reaching 97.5 % sensitivity, the lowest reaching 98.1 % specificity) and applied
unchanged to the other splits. Intervals: percentile bootstrap over images.</p>
{"".join(sections)}
<h2>Published results, for reference</h2>
<p class="note">These are other work's figures on real datasets, not results of this run.</p>
{reference}
<script>{LOAD_CHECK}</script>
</body></html>
"""

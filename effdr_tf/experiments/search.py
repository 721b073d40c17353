"""The RandAugment search: a grid over N (ops per image) and M (magnitude), as the RandAugment
paper tunes them (Cubuk et al. 2020, section 3: "a simple grid search"), on one recipe.

Every grid point is an experiment row (same runner, same resumable folders and table) scored on
the validation split; the table is ``randaugment.md/.csv`` and the heatmaps
``randaugment_<op weights>.png`` show validation kappa (and accuracy) over N x M.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np

from effdr_tf import fileio
from effdr_tf.experiments.runner import DEFAULT_DATA, Plan, read_result
from effdr_tf.experiments.tables import Row

STEM = "randaugment"


def grid_rows(recipe: str, num_layers, magnitudes, op_weights=("reference",)) -> list[Row]:
    """One row per (N, M, op weights) on ``recipe`` (``configs/FILE.py[:ARG]``)."""
    rows = []
    for weights in op_weights:
        for n in num_layers:
            for m in magnitudes:
                rows.append(Row(
                    name=f"randaugment/{weights}-n{int(n)}-m{float(m):g}",
                    table=f"RandAugment N x M ({weights} op weights) on {recipe}",
                    config=recipe, data=DEFAULT_DATA, splits=("validation",),
                    overrides=(("augment.name", "randaugment"),
                               ("augment.num_layers", str(int(n))),
                               ("augment.magnitude", str(float(m))),
                               ("augment.weights", weights)),
                ))  # fmt: skip
    return rows


def heatmaps(plan: Plan, rows: list[Row]) -> list[str]:
    """Writes one heatmap per op-weights setting of the finished grid points; returns paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grids: dict[str, dict] = {}
    for row in rows:
        overrides = dict(row.overrides)
        n, m = int(overrides["augment.num_layers"]), float(overrides["augment.magnitude"])
        result = read_result(plan, row)
        score = result["splits"]["validation"] if result else None
        grids.setdefault(overrides["augment.weights"], {})[(n, m)] = score
    written = []
    for weights, grid in grids.items():
        ns = sorted({n for n, _ in grid})
        ms = sorted({m for _, m in grid})
        fig, axes = plt.subplots(1, 2, figsize=(4 + 1.6 * len(ms), 1.5 + 0.9 * len(ns)))
        for ax, metric, scale in zip(axes, ("kappa", "accuracy"), (1.0, 100.0), strict=True):
            values = np.full((len(ns), len(ms)), np.nan)
            for (n, m), score in grid.items():
                if score is not None:
                    values[ns.index(n), ms.index(m)] = scale * score[metric]
            image = ax.imshow(values, cmap="viridis", aspect="auto")
            for i in range(len(ns)):
                for j in range(len(ms)):
                    text = "-" if np.isnan(values[i, j]) else f"{values[i, j]:.3g}"
                    ax.text(j, i, text, ha="center", va="center", color="w", fontsize=9)
            ax.set_xticks(range(len(ms)), [f"{m:g}" for m in ms])
            ax.set_yticks(range(len(ns)), [str(n) for n in ns])
            ax.set_xlabel("M (magnitude)")
            ax.set_ylabel("N (ops per image)")
            ax.set_title(f"validation {metric}{' %' if scale != 1 else ''}")
            fig.colorbar(image, ax=ax)
        fig.suptitle(f"RandAugment grid, {weights} op weights")
        fig.tight_layout()
        path = os.path.join(plan.out_dir, f"{STEM}_{weights}.png")
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=100)
        plt.close(fig)
        fileio.write_atomic(path, png.getvalue())
        written.append(path)
    best = _best(plan, rows)
    if best:
        fileio.write_atomic(
            os.path.join(plan.out_dir, f"{STEM}_best.json"), json.dumps(best, indent=1)
        )
    return written


def _best(plan: Plan, rows: list[Row]) -> dict | None:
    """The finished grid point with the highest validation kappa."""
    scored = [(read_result(plan, r), r) for r in rows]
    scored = [(res["splits"]["validation"]["kappa"], r) for res, r in scored if res]
    if not scored:
        return None
    kappa, row = max(scored, key=lambda x: x[0])
    return {"row": row.name, "kappa": kappa, **dict(row.overrides)}

"""What experiments.py does with its flags: select rows, run or print them, report."""

from __future__ import annotations

import fnmatch
import sys

from effdr_tf.errors import EffdrError
from effdr_tf.experiments import runner
from effdr_tf.experiments import search as search_lib
from effdr_tf.experiments.tables import THESIS_ROWS


def select(patterns: list[str]) -> list:
    """Thesis rows matching any of ``patterns`` (fnmatch), in table order."""
    chosen = [r for r in THESIS_ROWS if any(fnmatch.fnmatchcase(r.name, p) for p in patterns)]
    unmatched = [
        p for p in patterns if not any(fnmatch.fnmatchcase(r.name, p) for r in THESIS_ROWS)
    ]
    if unmatched:
        names = ", ".join(r.name for r in THESIS_ROWS)
        raise EffdrError(f"--rows={','.join(unmatched)}: no such row (rows: {names})")
    return chosen


def _numbers(values: list[str], name: str, kind=float) -> list:
    try:
        return [kind(v) for v in values]
    except ValueError as e:
        raise EffdrError(f"--{name}={','.join(values)}: not numbers") from e


def main(argv, *, out, rows, data, weights, settings, gpus, print_commands, bootstrap, search,
         recipe, num_layers, magnitudes, op_weights) -> int:  # fmt: skip
    plan = runner.Plan(
        out_dir=out,
        data=runner.parse_mapping(data, "data"),
        weights=runner.parse_mapping(weights, "weights"),
        settings=tuple(settings),
        bootstrap=bootstrap,
    )
    for setting in settings:
        if "=" not in setting:
            raise EffdrError(f"--set={setting}: expected KEY=VALUE (a config key)")
    if search:
        selected = search_lib.grid_rows(
            recipe, _numbers(num_layers, "num_layers", int), _numbers(magnitudes, "magnitudes"),
            op_weights,
        )  # fmt: skip
        stem = search_lib.STEM
    else:
        selected = select(rows)
        stem = "results"
    if print_commands:
        # The command line as given (absl leaves only positional arguments in argv).
        given = [a for a in argv[1:] if not (_is_flag(a, "rows") or _is_flag(a, "print_commands"))]
        base = [sys.executable, "experiments.py", *given]
        for line in runner.scheduler_commands(plan, selected, base):
            print(line)
        return 0
    lines = runner.run_rows(plan, selected, gpus=gpus or None, stem=stem)
    if search:
        for path in search_lib.heatmaps(plan, selected):
            print(f"heatmap: {path}")
    for line in lines:
        print(f"{line['row']:<22} thesis {line['thesis_accuracy'] or '-':>15}  ours "
              f"{line['accuracy'] or '-':>15}  {line['status']}")  # fmt: skip
    print(f"table: {plan.out_dir}/{stem}.md")
    failed = [line for line in lines if line["status"].startswith("failed")]
    return 1 if failed else 0


def _is_flag(arg: str, name: str) -> bool:
    return arg in (f"--{name}", f"--no{name}") or arg.startswith(f"--{name}=")

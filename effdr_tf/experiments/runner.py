"""Runs experiment rows as train.py and eval.py processes, resumably, and tabulates them.

Each row gets ``OUT/rows/<name>/``: ``run/`` (train.py's model_dir), ``eval/`` (eval.py's
output), ``log.txt`` and, written last, ``result.json``. A row with a ``result.json`` is
finished and is never run again; a row killed half-way starts again and train.py resumes from
its last checkpoint. ``OUT/results.md`` and ``results.csv`` list every selected row once, ours
beside the thesis's figure, and are rewritten after each row.

This module starts processes and reads JSON; it imports no TensorFlow.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import queue
import shlex
import subprocess
import sys
import threading

from effdr_tf import fileio
from effdr_tf.errors import EffdrError
from effdr_tf.experiments.tables import IMAGENET, Row

log = logging.getLogger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULT = "result.json"
# A bare --data=DIR names this key: the data of a search, or of rows that use it.
DEFAULT_DATA = "default"


@dataclasses.dataclass
class Plan:
    """Where the rows' inputs are and how they run.

    Attributes:
        out_dir: the experiments folder.
        data: data key -> builder output folder.
        weights: weights key -> checkpoint file.
        settings: ``key=value`` config overrides applied to every training row.
        bootstrap: eval.py's bootstrap rounds.
        python: the interpreter that runs train.py and eval.py.
    """

    out_dir: str
    data: dict
    weights: dict = dataclasses.field(default_factory=dict)
    settings: tuple[str, ...] = ()
    bootstrap: int = 200
    python: str = sys.executable


def parse_mapping(items: list[str], what: str) -> dict:
    """``["cifar10=DIR", ...]`` -> dict; a bare ``DIR`` maps ``DEFAULT_DATA``."""
    mapping = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            key, value = DEFAULT_DATA, item
        if not key or not value:
            raise EffdrError(f"--{what}={item}: expected KEY=PATH")
        mapping[key] = value
    return mapping


def row_dir(plan: Plan, row: Row) -> str:
    return os.path.join(plan.out_dir, "rows", row.name.replace("/", "_"))


def missing_inputs(plan: Plan, row: Row) -> str:
    """What the row still needs from the user ("" when nothing)."""
    if row.data not in plan.data:
        return f"needs --data={row.data}=DIR (the builder's output)"
    if row.weights and not row.weights.startswith(IMAGENET) and row.weights not in plan.weights:
        return f"needs --weights={row.weights}=FILE"
    return ""


def commands(plan: Plan, row: Row) -> list[list[str]]:
    """The train.py and eval.py command lines of a row."""
    folder = row_dir(plan, row)
    run = os.path.join(folder, "run")
    steps = []
    if row.evaluate_run_of:
        source = dataclasses.replace(row, name=row.evaluate_run_of)
        run = os.path.join(row_dir(plan, source), "run")
    else:
        config_file, _, arg = row.config.partition(":")
        config = os.path.join(REPO, config_file) + (f":{arg}" if arg else "")
        train = [plan.python, os.path.join(REPO, "train.py"), f"--config={config}",
                 f"--data_dir={plan.data[row.data]}", f"--model_dir={run}"]  # fmt: skip
        if row.weights:
            fallback = IMAGENET if row.weights.startswith(IMAGENET) else row.weights
            train.append(f"--config.model.weights={plan.weights.get(row.weights, fallback)}")
        train += [f"--config.{k}={v}" for k, v in row.overrides]
        train += [f"--config.{s}" for s in plan.settings]
        steps.append(train)
    steps.append([
        plan.python, os.path.join(REPO, "eval.py"), f"--model_dir={run}",
        f"--data_dir={plan.data[row.data]}", f"--split={','.join(row.splits)}",
        f"--out={os.path.join(folder, 'eval')}", f"--bootstrap={plan.bootstrap}",
    ])  # fmt: skip
    return steps


def read_result(plan: Plan, row: Row) -> dict | None:
    path = os.path.join(row_dir(plan, row), RESULT)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def run_row(plan: Plan, row: Row, env: dict | None = None) -> str:
    """Runs one row to its result.json; returns its status."""
    if read_result(plan, row) is not None:
        return "finished"
    missing = missing_inputs(plan, row)
    if missing:
        return missing
    if row.evaluate_run_of:
        source = dataclasses.replace(row, name=row.evaluate_run_of)
        if read_result(plan, source) is None:
            return f"waits for {row.evaluate_run_of}"
    folder = row_dir(plan, row)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "log.txt"), "a") as logfile:
        for argv in commands(plan, row):
            logfile.write(f"$ {shlex.join(argv)}\n")
            logfile.flush()
            code = subprocess.run(
                argv, stdout=logfile, stderr=subprocess.STDOUT, cwd=REPO,
                env={**os.environ, **(env or {})},
            ).returncode  # fmt: skip
            if code:
                return f"failed (exit {code}): see {os.path.join(folder, 'log.txt')}"
    with open(os.path.join(folder, "eval", "metrics.json")) as f:
        metrics = json.load(f)
    result = {
        "row": row.name,
        "splits": {
            split: {k: metrics["splits"][split][k] for k in ("count", "accuracy", "kappa")}
            for split in row.splits
        },
    }
    fileio.write_atomic(os.path.join(folder, RESULT), json.dumps(result, indent=1) + "\n")
    return "finished"


def _figures(values: list[float | None]) -> str:
    return " / ".join("" if v is None else f"{v:.2f}" for v in values)


def table(plan: Plan, rows: list[Row], statuses: dict) -> list[dict]:
    """One line per row: the thesis's figures, ours (accuracy %, then kappa), the status."""
    lines = []
    for row in rows:
        result = read_result(plan, row)
        splits = row.splits
        ours = [100 * result["splits"][s]["accuracy"] for s in splits] if result else []
        kappa = [result["splits"][s]["kappa"] for s in splits] if result else []
        thesis = dict(row.thesis)
        lines.append({
            "row": row.name,
            "table": row.table,
            "splits": " / ".join(splits),
            "thesis_accuracy": _figures([thesis.get(s) for s in splits]) if thesis else "",
            "accuracy": _figures(ours),
            "kappa": " / ".join(f"{k:.4f}" for k in kappa),
            "status": "finished" if result else statuses.get(row.name, "not run"),
            "folder": row_dir(plan, row),
        })  # fmt: skip
    return lines


def write_table(plan: Plan, lines: list[dict], stem: str = "results") -> None:
    if not lines:
        return
    os.makedirs(plan.out_dir, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(lines[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(lines)
    fileio.write_atomic(os.path.join(plan.out_dir, f"{stem}.csv"), buf.getvalue())
    header = ["row", "table", "split(s)", "thesis accuracy %", "our accuracy %", "our kappa",
              "status", "folder"]  # fmt: skip
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for line in lines:
        cells = [line[k] for k in lines[0]]
        md.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    fileio.write_atomic(os.path.join(plan.out_dir, f"{stem}.md"), "\n".join(md) + "\n")


def run_rows(plan: Plan, rows: list[Row], gpus: list[str] | None = None, stem="results"):
    """Runs the rows (one at a time, or one per GPU at a time) and writes the results table.

    Rows that evaluate another row's run go after every training row.

    Returns:
        The table's lines.
    """
    statuses: dict[str, str] = {}
    lock = threading.Lock()

    def record(row, status):
        with lock:
            statuses[row.name] = status
            log.info("%s: %s", row.name, status)
            write_table(plan, table(plan, rows, statuses), stem)

    phases = [[r for r in rows if not r.evaluate_run_of], [r for r in rows if r.evaluate_run_of]]
    for phase in phases:
        if not gpus:
            for row in phase:
                record(row, run_row(plan, row))
            continue
        todo: queue.Queue = queue.Queue()
        for row in phase:
            todo.put(row)

        def worker(gpu, todo=todo):
            while True:
                try:
                    row = todo.get_nowait()
                except queue.Empty:
                    return
                record(row, run_row(plan, row, env={"CUDA_VISIBLE_DEVICES": gpu}))

        threads = [threading.Thread(target=worker, args=(g,)) for g in gpus]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    lines = table(plan, rows, statuses)
    write_table(plan, lines, stem)
    return lines


def scheduler_commands(plan: Plan, rows: list[Row], base_argv: list[str]) -> list[str]:
    """One shell command per row (each runs that row alone), for a cluster scheduler; the
    evaluation-only rows after the rows they score. Run the same command without
    ``--print_commands`` afterwards to gather the table."""
    ordered = [r for r in rows if not r.evaluate_run_of] + [r for r in rows if r.evaluate_run_of]
    return [shlex.join([*base_argv, f"--rows={row.name}"]) for row in ordered]

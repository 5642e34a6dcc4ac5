"""Accuracy against mean visual tokens kept: the curves of a sweep, as PNGs and in W&B. All W&B code lives here.

Input is the sweep's rows (``fopru_eval/tools/sweep/results.py``, ``point_row``): one flat dict per point with
``strategy``, ``method``, ``{task}/visual_tokens_kept_mean`` and ``{task}/{metric}`` columns. Each (task, metric) gets
one curve: one line per method (a strategy, with its scorer and reading where a sweep varies them), and the unpruned
point (strategy ``none``) as a dashed reference line.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fopru_eval.core.strategies import STRATEGIES

TOKENS = "visual_tokens_kept_mean"
REFERENCE = "none (unpruned)"
X_LABEL = "mean visual tokens kept per doc"


@dataclass
class Curve:
    task: str
    metric: str
    # strategy -> (mean visual tokens kept, score), in increasing tokens
    lines: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    reference: tuple[float, float] | None = None


def curves_from_rows(rows: list[dict[str, Any]]) -> list[Curve]:
    """One curve per (task, metric) column that has a score and a token mean in some row."""
    metric_keys = [
        key for key in dict.fromkeys(k for row in rows for k in row) if "/" in key and not key.endswith(f"/{TOKENS}")
    ]
    curves = []
    for key in metric_keys:
        task, metric = key.split("/", 1)
        curve = Curve(task, metric)
        lines: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for row in rows:
            tokens, score = row.get(f"{task}/{TOKENS}"), row.get(key)
            if tokens is None or score is None or math.isnan(score):
                continue
            if not STRATEGIES.get(row["strategy"]).uses_budget:  # strategy=none: the unpruned reference
                curve.reference = (tokens, score)
            else:  # one line per method: a strategy, with the scorer and reading where a sweep varies them
                lines[row.get("method") or row["strategy"]].append((tokens, score))
        curve.lines = {strategy: sorted(points) for strategy, points in lines.items()}
        if curve.lines or curve.reference:
            curves.append(curve)
    return curves


# ----- PNG --------------------------------------------------------------------------------------------------------


def write_pngs(curves: list[Curve], directory: Path) -> list[Path]:
    """``curves_<task>.png`` per task, one panel per metric; the same data as the W&B plots."""
    from matplotlib.figure import Figure  # the object API: no pyplot, so no GUI backend and no global state

    by_task: dict[str, list[Curve]] = defaultdict(list)
    for curve in curves:
        by_task[curve.task].append(curve)
    paths = []
    for task, task_curves in by_task.items():
        columns = min(3, len(task_curves))
        rows = math.ceil(len(task_curves) / columns)
        figure = Figure(figsize=(5 * columns, 3.8 * rows), layout="constrained")
        for index, curve in enumerate(task_curves):
            axes = figure.add_subplot(rows, columns, index + 1)
            for strategy, points in curve.lines.items():
                axes.plot(*zip(*points, strict=True), marker="o", label=strategy)
            if curve.reference is not None:
                tokens, score = curve.reference
                axes.axhline(score, color="gray", linestyle="--", label=REFERENCE)
                axes.plot([tokens], [score], marker="*", markersize=10, color="gray", linestyle="none")
            axes.set(title=f"{task}: {curve.metric}", xlabel=X_LABEL, ylabel=curve.metric)
            axes.grid(alpha=0.3)
            axes.legend(fontsize="small")
        safe_name = re.sub(r"[^\w.-]", "_", task)
        path = directory / f"curves_{safe_name}.png"
        figure.savefig(path, dpi=100)
        paths.append(path)
    return paths


# ----- W&B --------------------------------------------------------------------------------------------------------


def start_wandb_run(
    project: str | None,
    entity: str | None,
    group: str | None,
    name: str | None,
    config: dict[str, Any],
    points: list[dict[str, Any]],
) -> Any:
    """A W&B run for the sweep; under ``wandb agent`` the agent's run (project and sweep parameters from its env).
    ``points`` holds each point's pruning args (strategy, budget, and significance/scores where swept)."""
    import wandb

    run = wandb.init(project=project, entity=entity, group=group, name=name, config=config, job_type="fopru-sweep")
    if len(points) == 1:
        # One point per run (a W&B sweep's agent runs): its pruning args are what the UI groups runs by. A W&B sweep
        # has set them already, and setdefaults leaves its values alone.
        run.config.setdefaults(points[0])
    return run


def log_point(run: Any, row: dict[str, Any]) -> None:
    """One history step per point: its metrics, its mean visual tokens and its keep ratio."""
    run.log(_numbers(row))


def log_sweep(run: Any, rows: list[dict[str, Any]]) -> None:
    """The table of all points, and per (task, metric) a line plot of the score against mean visual tokens."""
    import wandb

    columns = list(dict.fromkeys(key for row in rows for key in row))
    points = wandb.Table(columns=columns, data=[[row.get(column) for column in columns] for row in rows])
    logged: dict[str, Any] = {"points": points}
    for curve in curves_from_rows(rows):
        table = wandb.Table(columns=["strategy", TOKENS, curve.metric], data=_plot_rows(curve))
        title = f"{curve.task}: {curve.metric} vs {X_LABEL}"
        logged[f"curves/{curve.task}/{curve.metric}"] = wandb.plot.line(
            table, TOKENS, curve.metric, stroke="strategy", title=title
        )
    run.log(logged)
    if len(rows) > 1:
        # A run's summary is its last logged value per key: with several points that would pass the last point off as
        # the run's result. Their values stay in the history, the table and the plots.
        for key in dict.fromkeys(key for row in rows for key in _numbers(row)):
            del run.summary[key]
    run.summary["points"] = len(rows)


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    return {key: value for key, value in row.items() if isinstance(value, int | float) and not isinstance(value, bool)}


def _plot_rows(curve: Curve) -> list[list[Any]]:
    rows = [[strategy, tokens, score] for strategy, points in curve.lines.items() for tokens, score in points]
    if curve.reference is not None:
        # W&B's line plot has no reference line: draw one as a flat series from the fewest tokens to the unpruned point.
        tokens, score = curve.reference
        fewest = min([tokens, *(t for points in curve.lines.values() for t, _ in points)])
        rows += [[REFERENCE, x, score] for x in dict.fromkeys([fewest, tokens])]
    return rows

"""Accuracy against mean visual tokens kept: the curves of a sweep, as PNGs and in W&B. All W&B code lives here.

Input is the sweep's rows (``fopru_eval/tools/sweep/results.py``, ``point_row``): one flat dict per point with
``strategy``, ``method``, ``{task}/visual_tokens_kept_mean`` and ``{task}/{metric}`` columns. Each (task, metric) gets
one curve: one line per method (a strategy, with its scorer and reading where a sweep varies them), and the unpruned
point (strategy ``none``) as a dashed reference line.
"""

from __future__ import annotations

import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fopru_eval.core.strategies import STRATEGIES

TOKENS = "visual_tokens_kept_mean"
TOTAL_TOKENS = "visual_tokens_total_mean"
STDERR = "_stderr"
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
REFERENCE = "none (unpruned)"
X_LABEL = "mean visual tokens kept per doc"


@dataclass
class Curve:
    task: str
    metric: str
    # strategy -> (mean visual tokens kept, score), in increasing tokens
    lines: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    reference: tuple[float, float] | None = None
    # The standard errors lmms-eval reports, where it does: (mean visual tokens kept, score) -> stderr
    stderr: dict[tuple[float, float], float] = field(default_factory=dict)
    # Mean visual tokens per doc before pruning, where every point has the same
    total_tokens: float | None = None


def curves_from_rows(rows: list[dict[str, Any]]) -> list[Curve]:
    """One curve per (task, metric) column that has a score and a token mean in some row."""
    metric_keys = [
        key
        for key in dict.fromkeys(k for row in rows for k in row)
        if "/" in key and not key.endswith((f"/{TOKENS}", STDERR))
    ]
    totals = {row.get(TOTAL_TOKENS) for row in rows}
    curves = []
    for key in metric_keys:
        task, metric = key.split("/", 1)
        curve = Curve(task, metric, total_tokens=totals.pop() if len(totals) == 1 else None)
        lines: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for row in rows:
            tokens, score = row.get(f"{task}/{TOKENS}"), row.get(key)
            if tokens is None or score is None or math.isnan(score):
                continue
            if isinstance(stderr := row.get(key + STDERR), int | float) and math.isfinite(stderr):
                curve.stderr[(tokens, score)] = stderr
            if not STRATEGIES.get(row["strategy"]).uses_budget:  # strategy=none: the unpruned reference
                curve.reference = (tokens, score)
            else:  # one line per method: a strategy, with the scorer and reading where a sweep varies them
                lines[row.get("method") or row["strategy"]].append((tokens, score))
        curve.lines = {strategy: sorted(points) for strategy, points in lines.items()}
        if curve.lines or curve.reference:
            curves.append(curve)
    return curves


# ----- PNG --------------------------------------------------------------------------------------------------------


def write_pngs(curves: list[Curve], directory: Path, model: str | None = None) -> list[Path]:
    """``curves_<task>.png`` per task, one panel per metric (titled with ``model`` where given), with lmms-eval's
    standard errors as error bars; the same data as the W&B plots."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure  # the object API: no pyplot, so no GUI backend and no global state

    by_task: dict[str, list[Curve]] = defaultdict(list)
    for curve in curves:
        by_task[curve.task].append(curve)
    paths = []
    for task, task_curves in by_task.items():
        columns = min(3, len(task_curves))
        rows = math.ceil(len(task_curves) / columns)
        figure = Figure(figsize=(6.5 * columns, 3.8 * rows), layout="constrained")  # room for the legends beside
        for index, curve in enumerate(task_curves):
            axes = figure.add_subplot(rows, columns, index + 1)
            # Lines that coincide (methods that score the same) stay visible: each later one is drawn thinner, with
            # smaller markers of another shape, on top of the earlier ones.
            # More methods than ten colours (the demo's thirteen) take twenty, so no two lines share one: the ten dark
            # ones first, then their light twins.
            many = len(curve.lines) > 10
            colors = colormaps["tab20" if many else "tab10"]
            for line, (strategy, points) in enumerate(curve.lines.items()):
                errors = [curve.stderr.get(point, 0.0) for point in points]
                axes.errorbar(
                    *zip(*points, strict=True), yerr=errors, capsize=3, label=strategy,
                    marker=MARKERS[line % len(MARKERS)], markersize=max(3.0, 10.0 - 1.2 * line),
                    linewidth=max(0.8, 2.6 - 0.3 * line),
                    color=colors((2 * line) % 20 + (2 * line) // 20 if many else line % 10),
                )  # fmt: skip
            if curve.reference is not None:
                tokens, score = curve.reference
                axes.axhline(score, color="gray", linestyle="--", label=REFERENCE)
                axes.errorbar([tokens], [score], yerr=[curve.stderr.get(curve.reference, 0.0)], marker="*",
                              markersize=10, capsize=3, color="gray", linestyle="none")  # fmt: skip
            of_total = f" (of {curve.total_tokens:g})" if curve.total_tokens else ""
            title = f"{model}\n{task}: {curve.metric}" if model else f"{task}: {curve.metric}"
            axes.set(title=title, xlabel=X_LABEL + of_total, ylabel=curve.metric)
            # When every point scores the same, a flat line still gets a readable axis around it.
            low, high = axes.get_ylim()
            if high - low < 0.02:
                axes.set_ylim(low - 0.05, high + 0.05)
            axes.grid(alpha=0.3)
            axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the curves
        safe_name = re.sub(r"[^\w.-]", "_", task)
        path = directory / f"curves_{safe_name}.png"
        figure.savefig(path, dpi=100)
        paths.append(path)
    return paths


# ----- W&B --------------------------------------------------------------------------------------------------------


def under_wandb_agent() -> bool:
    return bool(os.environ.get("WANDB_SWEEP_ID"))


def wandb_init_args(wandb_args: str | None, **shortcuts: str | None) -> dict[str, Any] | None:
    """What every W&B run of a sweep passes to ``wandb.init``: ``wandb_args`` (lmms-eval's ``--wandb_args`` format)
    with the ``project``/``entity``/``group``/``name`` shortcuts, or None when W&B is not asked for. Refuses a key
    ``wandb.init`` does not take, and a shortcut that disagrees with ``wandb_args``, before any weights load."""
    import inspect

    import wandb
    from lmms_eval.utils import simple_parse_args_string

    init_args = simple_parse_args_string(wandb_args or "")
    for key, value in shortcuts.items():
        if value is None:
            continue
        if key in init_args and init_args[key] != value:
            raise ValueError(f"--wandb-{key}={value} and --wandb_args {key}={init_args[key]} disagree: give one")
        init_args[key] = value
    if not init_args and not under_wandb_agent():
        return None
    accepted = [name for name in inspect.signature(wandb.init).parameters if name not in ("config", "kwargs")]
    if unknown := sorted(set(init_args) - set(accepted)):
        raise ValueError(f"--wandb_args: wandb.init takes no {unknown}; accepted: {', '.join(accepted)}")
    return init_args


def wandb_run_args(init_args: dict[str, Any], label: str) -> dict[str, Any]:
    """One run's ``wandb.init`` args: the point's label (or ``curves``) after the sweep's name or group. A W&B sweep's
    agent names its own run."""
    if under_wandb_agent():
        return init_args
    return {**init_args, "name": f"{init_args.get('name') or init_args['group']}:{label}"}


def log_point_run(
    init_args: dict[str, Any],
    config: dict[str, Any],
    row: dict[str, Any],
    results: dict[str, Any],
    samples: dict[str, list[dict[str, Any]]] | None,
) -> None:
    """One W&B run for one point: opened with the point's config (adapter, model, pruning), then filled by lmms-eval's
    own ``WandbLogger`` (its results table, task and CLI configs, the results artifact, and the samples when
    ``samples`` is given), and our visual-token figures on top. Under ``wandb agent`` this is the agent's run, whose
    sweep parameters ``config.setdefaults`` leaves alone."""
    import wandb
    from lmms_eval.loggers import WandbLogger
    from loguru import logger

    run = wandb.init(**{"job_type": "fopru-point", **init_args})
    try:
        run.config.setdefaults(config)
        lmms_eval_logger = WandbLogger()  # attaches to the open run
        lmms_eval_logger.post_init(results)
        lmms_eval_logger.log_eval_result()
        if samples is not None:
            try:
                lmms_eval_logger.log_eval_samples(samples)
            except Exception as error:  # as lmms-eval's CLI does: the results are logged, the samples are on disk
                logger.warning(
                    f"lmms-eval's WandbLogger could not log the samples ({type(error).__name__}: {error}); in "
                    "lmms-eval 0.7.3 it fails on multiple-choice tasks. They are in the point's samples_*.jsonl."
                )
        already_logged = set(lmms_eval_logger.wandb_results)
        run.log({key: value for key, value in _numbers(row).items() if key not in already_logged})
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish()


def log_curves_run(init_args: dict[str, Any], config: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """One more run in the sweep's group: the table of all points, and per (task, metric) a line plot of the score
    against mean visual tokens."""
    import wandb

    run = wandb.init(**{"job_type": "fopru-sweep", **init_args}, config=config)
    try:
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
        run.summary["points"] = len(rows)
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish()


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

"""Sweep pruning configs through lmms-eval on one loaded model: one command, one accuracy-versus-tokens curve.

The model loads once; every (strategy, keep ratio) point then runs lmms-eval's own ``simple_evaluate`` in-process
with ``adapter.pruning`` replaced, so each point scores exactly as ``lmms-eval --model_args ...,strategy=S,
keep_ratio=R`` would. Rank 0 writes each point apart (``<output>/<strategy>@<ratio>/``), a summary of all points,
the curves as PNGs, and, when asked, one W&B run (``fopru_eval/curves.py``).

Ratio 1 keeps every token for every strategy, which is exactly ``strategy=none``: it is evaluated once, as the point
``none@1``, and serves as the reference line of every curve.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from fopru_eval.config import PRUNING_ARGS, STRATEGIES, PruningConfig

# Output types only lmms-eval's simple model class can answer (its chat task class accepts generation only).
LOGLIKELIHOOD_TYPES = ("loglikelihood", "multiple_choice")
# The budget is what a sweep varies, so the user's --model_args must leave it out.
SWEPT_ARGS = ("strategy", "keep_ratio", "keep_tokens")
TOKENS = "visual_tokens_kept_mean"


class SweepError(ValueError):
    """A sweep that cannot run as asked; raised before any weights load."""


@dataclass(frozen=True)
class Point:
    """One pruning config of a sweep."""

    config: PruningConfig

    @property
    def keep_ratio(self) -> float:
        return 1.0 if self.config.strategy == "none" else float(self.config.keep_ratio)

    @property
    def label(self) -> str:
        return f"{self.config.strategy}@{self.keep_ratio:g}"

    def model_args(self, base: str) -> str:
        """The ``--model_args`` that make ``lmms-eval`` alone evaluate this point."""
        budget = f"strategy={self.config.strategy}"
        if self.config.strategy != "none":
            budget += f",keep_ratio={self.keep_ratio!r}"  # repr: the exact float, where the label rounds
        base = base.strip(",")
        return f"{base},{budget}" if base else budget


def plan_points(strategies: list[str], keep_ratios: list[float], model_args: str) -> list[Point]:
    """Every point to evaluate, the unpruned reference first; each config validated as the adapter would."""
    from lmms_eval.utils import simple_parse_args_string

    given = simple_parse_args_string(model_args)
    if swept := sorted(set(given) & set(SWEPT_ARGS)):
        raise SweepError(
            f"--model_args sets {', '.join(swept)}, which the sweep varies itself: drop them and use --strategies "
            "and --keep-ratios"
        )
    # significance and seed may come with --model_args; they apply to every point.
    fixed = {name: value for name, value in given.items() if name in PRUNING_ARGS}

    budgets = []
    if "none" in strategies or 1.0 in keep_ratios:
        budgets.append(("none", None))
    for strategy in strategies:
        if strategy != "none":
            budgets += [(strategy, ratio) for ratio in sorted(set(keep_ratios), reverse=True) if ratio < 1.0]
    if not budgets:
        raise SweepError("nothing to evaluate: give a pruning strategy with a keep ratio below 1, or strategy none")
    points = []
    for strategy, ratio in budgets:
        config, _ = PruningConfig.from_model_args({**fixed, "strategy": strategy, "keep_ratio": ratio})
        points.append(Point(config))
    return points


# ----- tasks ------------------------------------------------------------------------------------------------------


def resolve_tasks(task_manager: Any, tasks: list[str]) -> list[str]:
    """Task, group and tag names (wildcards allowed), checked against lmms-eval's index as its CLI checks them."""
    names = task_manager.match_tasks(tasks)
    if missing := [task for task in tasks if task not in names and "*" not in task]:
        raise SweepError(f"tasks not found: {', '.join(missing)} (did you pass --include_path for local tasks?)")
    if not names:
        raise SweepError(f"no task matches {', '.join(tasks)}")
    return names


def leaf_task_configs(task_manager: Any, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The YAML config of every task that ``names`` stand for, groups and tags expanded.

    Reads YAML only: no dataset is loaded and no task code is imported, so this is cheap and works offline.
    """
    from lmms_eval.utils import load_yaml_config

    leaves: dict[str, dict[str, Any]] = {}
    for name in names:
        entry = task_manager.task_index.get(name)
        if entry is None:
            raise SweepError(f"{name} is not an lmms-eval task, group or tag")
        if entry["type"] in ("task", "python_task"):
            leaves[name] = load_yaml_config(entry["yaml_path"], mode="simple")
        elif entry["type"] == "tag":
            leaves.update(leaf_task_configs(task_manager, entry["task"]))
        else:  # a group: its members are names, or dicts that name a task and override its config, or inline tasks
            group = load_yaml_config(entry["yaml_path"], mode="simple")
            for member in group["task"]:
                member_name = member if isinstance(member, str) else member["task"]
                if member_name in task_manager.task_index:
                    leaves.update(leaf_task_configs(task_manager, [member_name]))
                elif isinstance(member, dict):
                    leaves[member_name] = member
                else:
                    raise SweepError(f"group {name} lists {member_name}, which is not an lmms-eval task")
    return leaves


def needs_simple_class(leaves: dict[str, dict[str, Any]]) -> bool:
    """lmms-eval's chat task class refuses loglikelihood and multiple-choice tasks; the simple class runs both."""
    return any(config.get("output_type") in LOGLIKELIHOOD_TYPES for config in leaves.values())


# ----- one point's results ------------------------------------------------------------------------------------------


def visual_token_stats(samples: dict[str, list[dict]], group_subtasks: dict[str, list[str]]) -> dict[str, Any]:
    """Mean visual tokens kept and total per doc, per task (groups: over their subtasks' docs) and overall.

    Each sample's ``token_counts`` holds one entry per request; a multiple-choice doc asks once per option with the
    same image, so its first entry stands for the doc.
    """
    per_doc: dict[str, list[tuple[int, int]]] = {}
    for task, task_samples in samples.items():
        counts = [_doc_counts(sample) for sample in task_samples]
        per_doc[task] = [c for c in counts if c is not None]

    def docs_of(name: str) -> list[tuple[int, int]]:
        if name in per_doc:
            return per_doc[name]
        return [c for subtask in group_subtasks.get(name, []) for c in docs_of(subtask)]

    names = list(dict.fromkeys([*samples, *group_subtasks]))
    return {
        "overall": _mean_counts([c for counts in per_doc.values() for c in counts]),
        "tasks": {name: _mean_counts(docs_of(name)) for name in names},
    }


def _doc_counts(sample: dict[str, Any]) -> tuple[int, int] | None:
    for counts in sample.get("token_counts") or []:
        if counts and counts.get("visual_tokens_kept") is not None:
            return counts["visual_tokens_kept"], counts["visual_tokens_total"]
    return None


def _mean_counts(counts: list[tuple[int, int]]) -> dict[str, float | int | None]:
    kept, total = sum(c[0] for c in counts), sum(c[1] for c in counts)
    return {
        "docs": len(counts),
        "visual_tokens_kept_mean": kept / len(counts) if counts else None,
        "visual_tokens_total_mean": total / len(counts) if counts else None,
        "visual_keep_fraction": kept / total if total else None,
    }


def task_metrics(results: dict[str, Any]) -> dict[str, float]:
    """``{task}/{metric}`` -> value for every numeric metric, named as lmms-eval's own W&B logger names them."""
    from lmms_eval.loggers.utils import remove_none_pattern

    metrics = {}
    for task, values in results.get("results", {}).items():
        for key, value in values.items():
            metric, _ = remove_none_pattern(key)
            # stderr is "N/A" or a number; a submission-only metric is None: neither is a score.
            if metric == "alias" or "_stderr" in metric or isinstance(value, bool):
                continue
            if isinstance(value, int | float):
                metrics[f"{task}/{metric}"] = float(value)
    return metrics


def point_row(point: Point, results: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    """One flat row per point: what the summary CSV, the W&B table and the curves are made of."""
    overall = stats["overall"]
    row: dict[str, Any] = {
        "label": point.label,
        "strategy": point.config.strategy,
        "keep_ratio": point.keep_ratio,
        TOKENS: overall["visual_tokens_kept_mean"],
        "visual_tokens_total_mean": overall["visual_tokens_total_mean"],
        "visual_keep_fraction": overall["visual_keep_fraction"],
    }
    for task, task_stats in stats["tasks"].items():
        row[f"{task}/{TOKENS}"] = task_stats["visual_tokens_kept_mean"]
    row.update(task_metrics(results))
    return row


def write_point(directory: Path, point: Point, results: dict[str, Any], model: str) -> dict[str, Any]:
    """``results.json`` (lmms-eval's results plus a ``fopru`` block) and one samples JSONL per task."""
    from lmms_eval.loggers.utils import _handle_non_serializable

    samples = results.pop("samples", {})
    stats = visual_token_stats(samples, results.get("group_subtasks", {}))
    # simple_evaluate names a model instance by its class; the registry name is what reruns it.
    results["config"]["model"] = model
    results["fopru"] = {"point": point.label, "pruning": point.config.to_dict(), "visual_tokens": stats}
    directory.mkdir(parents=True, exist_ok=True)
    dumped = json.dumps(results, indent=2, default=_handle_non_serializable, ensure_ascii=False)
    (directory / "results.json").write_text(dumped + "\n", encoding="utf-8")
    for task, task_samples in samples.items():
        with open(directory / f"samples_{task}.jsonl", "w", encoding="utf-8") as file:
            for sample in task_samples:
                file.write(json.dumps(_loggable(sample), default=_handle_non_serializable, ensure_ascii=False) + "\n")
    return point_row(point, results, stats)


def _loggable(sample: dict[str, Any]) -> dict[str, Any]:
    # As lmms-eval's own samples files: the doc (images) and the request arguments (functions) stay out, the prompt
    # goes in as "input".
    record = {key: value for key, value in sample.items() if key not in ("doc", "arguments")}
    arguments = sample.get("arguments") or [None]
    record["input"] = arguments[0]
    return record


def write_summary(directory: Path, rows: list[dict[str, Any]], points: list[Point], about: dict[str, Any]) -> None:
    """``summary.json`` (every point's row and full pruning config) and ``summary.csv`` (the rows)."""
    summary = {**about, "points": rows, "pruning": {p.label: p.config.to_dict() for p in points}}
    (directory / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(directory / "summary.csv", "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


# ----- the run ----------------------------------------------------------------------------------------------------


def _lmms_eval_cli_args(**values: Any) -> argparse.Namespace:
    """lmms-eval's own CLI defaults, with ``values`` set.

    The evaluator reads some of them (``process_with_media``, ``reasoning_tags``), tasks that write submission files
    read ``output_path``, and the results JSON records them all under ``resolved_cli_args``; so a point scores as
    ``lmms-eval`` with the same arguments would, and its results say how to rerun it.
    """
    from lmms_eval.__main__ import parse_eval_args

    with mock.patch.object(sys, "argv", ["lmms-eval"]):
        _, args = parse_eval_args()
    for name, value in values.items():
        setattr(args, name, value)
    return args


def output_directory(base: Path) -> Path:
    """``base``, or under ``wandb agent`` ``base/<run id>``: agent runs share one command line, and each writes its
    own summary."""
    run_id = os.environ.get("WANDB_RUN_ID")
    return base / run_id if os.environ.get("WANDB_SWEEP_ID") and run_id else base


def run_sweep(args: argparse.Namespace) -> list[dict[str, Any]] | None:
    """Evaluate every point; rank 0 writes everything and returns the rows, other ranks return None."""
    import torch
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.models import get_model
    from lmms_eval.tasks import TaskManager
    from lmms_eval.utils import get_datetime_str, make_table
    from loguru import logger

    from fopru_eval import curves
    from fopru_model_adapters.base import FoPruLMM

    # As lmms-eval's CLI, once its modules are imported (lmms_eval.models resets the logger to WARNING on import).
    logger.remove()
    logger.add(sys.stderr, level=args.verbosity)
    # Everything that can be wrong with the request is checked before the weights load.
    points = plan_points(args.strategies, args.keep_ratios, args.model_args)
    include_path = [str(Path(path).resolve()) for path in args.include_path]
    task_manager = TaskManager(args.verbosity, include_path=include_path, model_name=args.model)
    task_names = resolve_tasks(task_manager, args.tasks)
    force_simple = args.force_simple or needs_simple_class(leaf_task_configs(task_manager, task_names))
    model_class = get_model(args.model, force_simple)
    if not issubclass(model_class, FoPruLMM):
        raise SweepError(f"--model {args.model} is not a FoPru adapter (e.g. llava_fopru): it has no pruning to sweep")

    adapter = model_class.create_from_arg_string(
        points[0].model_args(args.model_args), {"batch_size": args.batch_size, "device": args.device}
    )
    adapter.keep_loaded = True
    # Rank 0 as lmms-eval's evaluator counts it (the launcher's RANK): it alone gets results back. The adapter's own
    # rank is no guide before the first evaluation: on CPUs the evaluator sets up the process group itself.
    is_main = int(os.environ.get("RANK", 0)) == 0
    output = output_directory(args.output_path)
    about = {
        "model": args.model,
        "model_args": args.model_args,
        "model_class": "simple" if force_simple else "chat",
        "tasks": task_names,
        "limit": args.limit,
        "batch_size": args.batch_size,
    }
    # Only rank 0 ever touches W&B, and only once the model has loaded: no stray or empty runs.
    wandb_run = None
    if is_main and (args.wandb_project or os.environ.get("WANDB_SWEEP_ID")):
        wandb_run = curves.start_wandb_run(
            project=args.wandb_project,
            entity=args.wandb_entity,
            group=args.wandb_group,
            name=args.wandb_name,
            config={**about, "strategies": args.strategies, "keep_ratios": args.keep_ratios},
            points=[(p.config.strategy, p.keep_ratio) for p in points],
        )

    rows: list[dict[str, Any]] = []
    try:
        for point in points:
            adapter.pruning = point.config
            model_args = point.model_args(args.model_args)
            point_dir = output / point.label
            cli_args = _lmms_eval_cli_args(
                model=args.model, model_args=model_args, tasks=",".join(args.tasks), include_path=include_path,
                batch_size=args.batch_size, device=args.device, limit=args.limit, force_simple=force_simple,
                log_samples=True, output_path=str(point_dir),
            )  # fmt: skip
            results = simple_evaluate(
                model=adapter,
                model_args=model_args,
                tasks=task_names,
                task_manager=task_manager,
                batch_size=args.batch_size,
                device=args.device,
                limit=args.limit,
                log_samples=True,
                verbosity=args.verbosity,
                cli_args=cli_args,
                force_simple=force_simple,
                # Each point its own date: simple_evaluate's default is fixed when lmms-eval is imported.
                datetime_str=get_datetime_str(),
                distributed_executor_backend="torchrun" if torch.distributed.is_initialized() else "accelerate",
            )
            if results is None:  # not rank 0: the evaluator gathered everything there
                continue
            rows.append(write_point(point_dir, point, results, args.model))
            print(f"\n{args.model} pruning {point.label}: {point_dir}\n{make_table(results)}")
            if wandb_run is not None:
                curves.log_point(wandb_run, rows[-1])
        if not is_main:
            return None
        write_summary(output, rows, points, about)
        pngs = curves.write_pngs(curves.curves_from_rows(rows), output)
        if wandb_run is not None:
            curves.log_sweep(wandb_run, rows)
    except BaseException:
        if wandb_run is not None:
            wandb_run.finish(exit_code=1)
        raise
    if wandb_run is not None:
        wandb_run.finish()
    print(f"\nfopru-eval sweep: {len(rows)} points in {output}: summary.json, summary.csv, {len(pngs)} PNGs")
    return rows


# ----- command line -----------------------------------------------------------------------------------------------


def _strategies(text: str) -> list[str]:
    values = [value.strip() for value in text.split(",") if value.strip()]
    if not values or not set(values) <= set(STRATEGIES):
        raise argparse.ArgumentTypeError(f"{text!r}: accepted strategies are {', '.join(STRATEGIES)}")
    return list(dict.fromkeys(values))


def _keep_ratios(text: str) -> list[float]:
    try:
        values = [float(value) for value in text.split(",") if value.strip()]
    except ValueError:
        values = []
    if not values or not all(0.0 < value <= 1.0 for value in values):
        raise argparse.ArgumentTypeError(f"{text!r}: keep ratios are numbers in (0, 1], comma-separated")
    return values


def _limit(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() else value


def _default_include_path() -> str:
    import fopru_eval_tasks

    return os.path.dirname(fopru_eval_tasks.__file__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # lmms-eval spells options with underscores, the issue with hyphens: both work. The singular forms are what a W&B
    # sweep passes (--strategy=rank --keep_ratio=0.5), one point per agent run.
    parser.add_argument("--model", default="llava_fopru", help="a FoPru adapter (default llava_fopru)")
    parser.add_argument(
        "--model_args", "--model-args", required=True,
        help="as for lmms-eval, without strategy/keep_ratio/keep_tokens, e.g. pretrained=llava-hf/llava-1.5-7b-hf",
    )  # fmt: skip
    parser.add_argument("--tasks", type=lambda text: [t for t in text.split(",") if t], required=True)
    parser.add_argument(
        "--strategies", "--strategy", type=_strategies, default=["rank", "row", "random"],
        help="comma-separated, from rank,row,random,none (default rank,row,random)",
    )  # fmt: skip
    parser.add_argument(
        "--keep-ratios", "--keep_ratios", "--keep_ratio", "--keep-ratio", type=_keep_ratios,
        default=[1.0, 0.5, 0.25, 0.11],
        help="comma-separated, in (0, 1]; 1 (or strategy none) adds the unpruned reference (default 1,.5,.25,.11)",
    )  # fmt: skip
    parser.add_argument(
        "--output_path", "--output-path", "--output", type=Path, required=True,
        help="results go to OUTPUT/<strategy>@<ratio>/, the summary and PNGs to OUTPUT/",
    )  # fmt: skip
    parser.add_argument(
        "--include_path", "--include-path", action="append", default=None,
        help="folder of extra lmms-eval tasks; repeatable (default: this package's tasks, fopru_* and fopru_paper)",
    )  # fmt: skip
    parser.add_argument("--batch_size", "--batch-size", default=1, help="per process (default 1)")
    parser.add_argument("--device", default=None, help="default cuda if available, else cpu")
    parser.add_argument("--limit", type=_limit, default=None, help="docs per task, for trials (as lmms-eval)")
    parser.add_argument(
        "--force_simple", "--force-simple", action="store_true",
        help="use lmms-eval's simple model class; chosen automatically when a task is multiple-choice or loglikelihood",
    )  # fmt: skip
    parser.add_argument("--wandb-project", "--wandb_project", help="log the sweep to this W&B project")
    parser.add_argument("--wandb-entity", "--wandb_entity")
    parser.add_argument("--wandb-group", "--wandb_group", help="e.g. to put a sweep and its reference run together")
    parser.add_argument("--wandb-name", "--wandb_name", help="run name (default: W&B's)")
    parser.add_argument("--verbosity", default="INFO", help="lmms-eval's log level (default INFO)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.include_path is None:
        args.include_path = [_default_include_path()]
    try:
        run_sweep(args)
    except SweepError as error:
        print(f"fopru-eval sweep: {error}", file=sys.stderr)
        return 2
    return 0

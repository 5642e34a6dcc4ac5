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
import os
import sys
from pathlib import Path
from typing import Any
from unittest import mock

from fopru_eval.core.config import PruningConfigError
from fopru_eval.core.scoring import READINGS, SCORERS
from fopru_eval.core.strategies import STRATEGIES
from fopru_eval.tools.sweep.plan import (
    PEER_TOKENS,
    PEER_VIEW_TOKENS,
    SweepError,
    fixed_pruning_args,
    leaf_task_configs,
    needs_simple_class,
    parse_method,
    plan_points,
    resolve_tasks,
)
from fopru_eval.tools.sweep.results import (
    finished_row,
    resume_manifest,
    sweep_manifest,
    write_manifest,
    write_point,
    write_summary,
)

# ----- the run ----------------------------------------------------------------------------------------------------


# The options that make the points, as recorded in the W&B run's config.
SWEPT_OPTIONS = ("strategies", "keep_ratios", "keep_tokens", "significance", "scores")


def peer_budgets(model_class: type, model_args: str) -> tuple[list[float], list[int] | None]:
    """The default budgets: peers' 192, 128 and 64 tokens where a view has LLaVA-1.5's 576 tokens, else the same
    fractions as keep ratios (read from the checkpoint's config; no weights load). Ratio 1 adds the reference."""
    from lmms_eval.utils import simple_parse_args_string
    from transformers import AutoConfig

    pretrained = simple_parse_args_string(model_args).get("pretrained")
    view_tokens = model_class.family_class.view_tokens(AutoConfig.from_pretrained(pretrained)) if pretrained else None
    if view_tokens == PEER_VIEW_TOKENS:
        return [1.0], list(PEER_TOKENS)
    return [1.0, *(tokens / PEER_VIEW_TOKENS for tokens in PEER_TOKENS)], None


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
    from lmms_eval.utils import get_datetime_str, make_table, simple_parse_args_string
    from loguru import logger

    from fopru_eval.tools import curves
    from fopru_model_adapters.base import FoPruLMM

    # As lmms-eval's CLI, once its modules are imported (lmms_eval.models resets the logger to WARNING on import).
    logger.remove()
    logger.add(sys.stderr, level=args.verbosity)
    # Everything that can be wrong with the request is checked before the weights load.
    fixed_pruning_args(args.model_args, args.significance, args.scores)
    try:
        wandb_args = curves.wandb_init_args(
            args.wandb_args, project=args.wandb_project, entity=args.wandb_entity, group=args.wandb_group,
            name=args.wandb_name,
        )  # fmt: skip
    except ValueError as error:
        raise SweepError(str(error)) from None
    include_path = [str(Path(path).resolve()) for path in args.include_path]
    task_manager = TaskManager(args.verbosity, include_path=include_path, model_name=args.model)
    task_names = resolve_tasks(task_manager, args.tasks)
    force_simple = args.force_simple or needs_simple_class(leaf_task_configs(task_manager, task_names))
    model_class = get_model(args.model, force_simple)
    if not issubclass(model_class, FoPruLMM):
        raise SweepError(f"--model {args.model} is not a FoPru adapter (e.g. llava_fopru): it has no pruning to sweep")
    if args.keep_ratios is None and args.keep_tokens is None:
        args.keep_ratios, args.keep_tokens = peer_budgets(model_class, args.model_args)
    elif args.keep_ratios is None:
        args.keep_ratios = []  # the reference only where asked for (strategy none): a W&B agent run is one point
    points = plan_points(
        args.strategies, args.keep_ratios or [], args.model_args, args.keep_tokens, args.significance, args.scores
    )
    if curves.under_wandb_agent() and len(points) > 1:
        raise SweepError(f"under wandb agent a run is one point, not {len(points)}: {[p.label for p in points]}")

    output = output_directory(args.output_path)
    about = {
        "model": args.model,
        "pretrained": simple_parse_args_string(args.model_args).get("pretrained"),
        "model_args": args.model_args,
        "model_class": "simple" if force_simple else "chat",
        "tasks": task_names,
        "limit": args.limit,
        "batch_size": args.batch_size,
    }
    # Points an earlier run of the same sweep finished in this folder are reused; another sweep's are refused.
    manifest = sweep_manifest(about)
    earlier = resume_manifest(output, manifest) or {}
    if wandb_args is not None and not curves.under_wandb_agent():
        # A sweep's runs share a group; a resumed sweep keeps its first run's.
        wandb_args.setdefault("group", earlier.get("wandb_group") or f"fopru-sweep-{get_datetime_str()}")

    adapter = model_class.create_from_arg_string(
        points[0].model_args(args.model_args), {"batch_size": args.batch_size, "device": args.device}
    )
    adapter.keep_loaded = True
    # Rank 0 as lmms-eval's evaluator counts it (the launcher's RANK): it alone gets results back. The adapter's own
    # rank is no guide before the first evaluation: on CPUs the evaluator sets up the process group itself.
    is_main = int(os.environ.get("RANK", 0)) == 0
    if is_main:
        write_manifest(output, {**manifest, "wandb_group": (wandb_args or {}).get("group")})
    # Only rank 0 touches W&B, and only once a point has results: no stray or empty runs.
    use_wandb = is_main and wandb_args is not None
    rows: list[dict[str, Any]] = []
    for point in points:
        adapter.pruning = point.config
        model_args = point.model_args(args.model_args)
        point_dir = output / point.label
        if (row := finished_row(point_dir, point)) is not None:
            rows.append(row)
            print(f"\n{args.model} pruning {point.label}: finished by an earlier run, read from {point_dir}")
            continue
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
        samples = results.pop("samples", {})
        rows.append(write_point(point_dir, point, results, samples, args.model))
        print(f"\n{args.model} pruning {point.label}: {point_dir}\n{make_table(results)}")
        if use_wandb:
            config = {**about, **dict(point.swept_args), "fopru": point.config.to_dict()}
            curves.log_point_run(
                curves.wandb_run_args(wandb_args, point.label), config, rows[-1], results,
                samples if args.wandb_log_samples else None,
            )  # fmt: skip
    if not is_main:
        return None
    write_summary(output, rows, points, about)
    # The checkpoint as a user names it: a hub id, or the last two parts of a local path.
    checkpoint = about["pretrained"] or ""
    if Path(checkpoint).is_absolute():
        checkpoint = "/".join(Path(checkpoint).parts[-2:])
    pngs = curves.write_pngs(curves.curves_from_rows(rows), output, model=f"{args.model}: {checkpoint}")
    if use_wandb and len(rows) > 1:
        config = {**about, **{name: getattr(args, name) for name in SWEPT_OPTIONS}}
        curves.log_curves_run(curves.wandb_run_args(wandb_args, "curves"), config, rows)
    print(f"\nfopru-eval sweep: {len(rows)} points in {output}: summary.json, summary.csv, {len(pngs)} PNGs")
    return rows


# ----- command line -----------------------------------------------------------------------------------------------


def _names(registry: Any, values: list[str]) -> list[str]:
    """Comma-separated registry names, each checked now (a typo costs no model load)."""
    if not values:
        raise argparse.ArgumentTypeError(f"accepted values: {registry.accepted()}")
    for value in values:
        try:
            registry.get(value)
        except PruningConfigError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return list(dict.fromkeys(values))


def _strategies(text: str) -> list[str]:
    """Methods: a strategy, optionally with its scorer and reading (``rank+cls+logits``), as in point labels."""
    methods = [value.strip() for value in text.split(",") if value.strip()]
    _names(STRATEGIES, [parse_method(method)[0] for method in methods])
    for method in methods:
        _names(SCORERS, [parse_method(method)[1].get("significance", "auto")])
    return list(dict.fromkeys(methods))


def _significances(text: str) -> list[str]:
    return _names(SCORERS, [value.strip() for value in text.split(",") if value.strip()])


def _scores(text: str) -> list[str]:
    values = [value.strip() for value in text.split(",") if value.strip()]
    if not values or not set(values) <= set(READINGS):
        raise argparse.ArgumentTypeError(f"{text!r}: accepted values are {', '.join(READINGS)}")
    return list(dict.fromkeys(values))


def _keep_tokens(text: str) -> list[int]:
    try:
        values = [int(value) for value in text.split(",") if value.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: keep tokens are integers >= 1, comma-separated")
    return values


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
        help="comma-separated methods: a strategy (rank, row, random, uniform, none, package.module:function), "
        "optionally with its scorer and reading, e.g. rank+cls+softmax (default rank,row,random)",
    )  # fmt: skip
    parser.add_argument(
        "--keep-ratios", "--keep_ratios", "--keep_ratio", "--keep-ratio", type=_keep_ratios, default=None,
        help="comma-separated, in (0, 1]; 1 (or strategy none) adds the unpruned reference",
    )  # fmt: skip
    parser.add_argument(
        "--keep-tokens", "--keep_tokens", type=_keep_tokens, default=None,
        help="comma-separated tokens per image (per view); add strategy none for the reference. Without either "
        "budget: peers' 192,128,64 where an image has LLaVA-1.5's 576 tokens, else the same fractions as ratios, "
        "and the unpruned reference",
    )  # fmt: skip
    parser.add_argument(
        "--significance", type=_significances, default=None,
        help="comma-separated scorers for the scoring strategies, e.g. auto,column,row,cls (default: model_args')",
    )  # fmt: skip
    parser.add_argument(
        "--scores", type=_scores, default=None,
        help="comma-separated readings of the attention for the built-in scorers: logits,softmax",
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
    parser.add_argument(
        "--wandb-project", "--wandb_project",
        help="log to this W&B project: one run per point (lmms-eval's own W&B logging, plus visual tokens) and one "
        "with the curves, in one group",
    )  # fmt: skip
    parser.add_argument("--wandb-entity", "--wandb_entity")
    parser.add_argument("--wandb-group", "--wandb_group", help="e.g. to put a sweep and its reference run together")
    parser.add_argument("--wandb-name", "--wandb_name", help="prefix of the runs' names (default: the group)")
    parser.add_argument(
        "--wandb_args", "--wandb-args", default=None,
        help="as lmms-eval's: comma-separated wandb.init arguments, e.g. project=fopru,entity=me,tags=trial",
    )  # fmt: skip
    parser.add_argument(
        "--wandb_log_samples", "--wandb-log-samples", action="store_true",
        help="also log every point's samples as tables (lmms-eval's --wandb_log_samples)",
    )  # fmt: skip
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

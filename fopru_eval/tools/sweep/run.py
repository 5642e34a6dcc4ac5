"""Sweep pruning configs through lmms-eval on one loaded model: one command, one accuracy-versus-tokens curve.

The model loads once; every (strategy, keep ratio) point then runs lmms-eval's own ``simple_evaluate`` in-process
with ``adapter.pruning`` replaced, so each point scores exactly as ``lmms-eval --model_args ...,strategy=S,
keep_ratio=R`` would. Rank 0 writes each point apart (``<output>/<strategy>@<ratio>/``), a summary of all points,
the curves as PNGs, and, when asked, W&B runs: one per point and one with the curves, in one group
(``fopru_eval/tools/curves.py``). A rerun into the same folder reuses the points finished there.

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

from fopru_eval.tools.sweep.plan import (
    PEER_TOKENS,
    PEER_VIEW_TOKENS,
    SweepError,
    fixed_pruning_args,
    leaf_task_configs,
    needs_simple_class,
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
    from fopru_eval.tools.curves import under_wandb_agent

    run_id = os.environ.get("WANDB_RUN_ID")
    return base / run_id if under_wandb_agent() and run_id else base


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
        "model_class": "simple" if model_class.is_simple else "chat",
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

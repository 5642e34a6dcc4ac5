"""``fopru-eval sweep``'s command line: options checked as they are parsed (a typo costs no model load), then
``run_sweep``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from fopru_eval.core.config import PruningConfigError
from fopru_eval.core.scoring import READINGS, SCORERS
from fopru_eval.core.strategies import STRATEGIES
from fopru_eval.tools.sweep.plan import SweepError, parse_method
from fopru_eval.tools.sweep.run import run_sweep


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
        help="comma-separated methods: a strategy (rank, row, random, uniform, none, visionzip, vispruner, divprune, "
        "fastv, package.module:function), "
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

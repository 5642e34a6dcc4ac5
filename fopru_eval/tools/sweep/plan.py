"""What a sweep evaluates: its points (pruning configs), checked before any weights load, and its tasks."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fopru_eval.core.config import OPTION_ARGS, PRUNING_ARGS, PruningConfig
from fopru_eval.core.scoring import READINGS
from fopru_eval.core.strategies import STRATEGIES

# Output types only lmms-eval's simple model class can answer (its chat task class accepts generation only).
LOGLIKELIHOOD_TYPES = ("loglikelihood", "multiple_choice")
# Peers' budgets: 192, 128 and 64 of LLaVA-1.5's 576 visual tokens per image (VisionZip, SparseVLM, PyramidDrop, ...).
PEER_TOKENS, PEER_VIEW_TOKENS = (192, 128, 64), 576
# The budget is what a sweep varies, so the user's --model_args must leave it out.
SWEPT_ARGS = ("strategy", "keep_ratio", "keep_tokens")


class SweepError(ValueError):
    """A sweep that cannot run as asked; raised before any weights load."""


@dataclass(frozen=True)
class Point:
    """One pruning config of a sweep, and the model args that make it differ from the user's ``--model_args``."""

    config: PruningConfig
    # strategy, the budget, and significance/scores where the sweep varies them, in the order they are written.
    swept_args: tuple[tuple[str, Any], ...]

    @property
    def method(self) -> str:
        """How tokens are chosen, without the budget: the strategy, plus the scorer and the reading of the attention
        where the sweep varies them (``rank+cls+logits``)."""
        extras = [str(value) for name, value in self.swept_args if name in ("significance", "scores")]
        return "+".join([self.config.strategy, *extras])

    @property
    def keep_ratio(self) -> float | None:
        """The ratio budget; 1 for the unpruned reference, None for a token budget."""
        if not self.config.selection.uses_budget:
            return 1.0
        return None if self.config.keep_ratio is None else float(self.config.keep_ratio)

    @property
    def label(self) -> str:
        # Three significant digits: 0.5, 0.25, 0.11, and 0.333 for peers' 192 of 576 (model_args has the exact float).
        budget = f"{self.config.keep_tokens}tok" if self.config.keep_tokens is not None else f"{self.keep_ratio:.3g}"
        return f"{self.method}@{budget}"

    def model_args(self, base: str) -> str:
        """The ``--model_args`` that make ``lmms-eval`` alone evaluate this point."""
        # repr: the exact float, where the label rounds
        swept = ",".join(f"{name}={value!r}" if isinstance(value, float) else f"{name}={value}"
                         for name, value in self.swept_args)  # fmt: skip
        base = base.strip(",")
        return f"{base},{swept}" if base else swept


def parse_method(spec: str) -> tuple[str, dict[str, str]]:
    """``rank+cls+logits`` -> ("rank", {"significance": "cls", "scores": "logits"}): a strategy, optionally with the
    scorer and the reading it uses, as in point labels."""
    strategy, *extras = spec.split("+")
    chosen: dict[str, str] = {}
    for extra in extras:
        chosen["scores" if extra in READINGS else "significance"] = extra
    return strategy, chosen


def fixed_pruning_args(
    model_args: str, significances: list[str] | None = None, scores: list[str] | None = None
) -> dict[str, Any]:
    """The pruning args of ``--model_args``, which apply to every point; refused where the sweep varies them."""
    from lmms_eval.utils import simple_parse_args_string

    given = simple_parse_args_string(model_args)
    varied = SWEPT_ARGS + (("significance",) if significances else ()) + (("scores",) if scores else ())
    if swept := sorted(set(given) & set(varied)):
        raise SweepError(
            f"--model_args sets {', '.join(swept)}, which the sweep varies itself: drop them and use --strategies, "
            "--keep-ratios or --keep-tokens, --significance and --scores"
        )
    return {name: value for name, value in given.items() if name in PRUNING_ARGS}


def plan_points(
    strategies: list[str],
    keep_ratios: list[float],
    model_args: str,
    keep_tokens: list[int] | None = None,
    significances: list[str] | None = None,
    scores: list[str] | None = None,
) -> list[Point]:
    """Every point to evaluate, the unpruned reference first; each config validated as the adapter would.

    ``strategies`` are methods (``rank``, ``rank+cls``); a scoring strategy without its own scorer or reading runs once
    per ``significances`` x ``scores`` (default: what ``model_args`` says, or the defaults). Budgets are every ratio
    below 1 of ``keep_ratios`` and every count of ``keep_tokens``; ratio 1, or a strategy without a budget, adds the
    unpruned reference.
    """
    # significance, scores, positions and seed may come with --model_args; they apply to every point.
    fixed = fixed_pruning_args(model_args, significances, scores)
    budgets: list[tuple[str, Any]] = [("keep_ratio", r) for r in sorted(set(keep_ratios), reverse=True) if r < 1.0]
    budgets += [("keep_tokens", k) for k in sorted(set(keep_tokens or []), reverse=True)]

    methods = [parse_method(spec) for spec in strategies]
    pruning = [(strategy, chosen) for strategy, chosen in methods if STRATEGIES.get(strategy).uses_budget]
    plans: list[tuple[tuple[str, Any], ...]] = []
    if len(pruning) < len(methods) or 1.0 in keep_ratios:
        plans.append((("strategy", "none"),))
    for strategy, chosen in pruning:
        variants: list[tuple[tuple[str, Any], ...]] = [()]
        selection = STRATEGIES.get(strategy)
        # A method defined on its own scorer (VisionZip's CLS attention) varies only the reading; an in-LLM one
        # (FastV) reads neither.
        if selection.needs_scores and selection.stage == "vision":
            own = [None] if selection.significance else significances or [None]
            variants = [
                tuple((name, value) for name, value in (("significance", sig), ("scores", reading)) if value)
                for sig in ([chosen["significance"]] if "significance" in chosen else own)
                for reading in ([chosen["scores"]] if "scores" in chosen else scores or [None])
            ]
        plans += [(("strategy", strategy), budget, *variant) for variant in variants for budget in budgets]
    if not plans:
        raise SweepError("nothing to evaluate: give a pruning strategy with a budget below all tokens, or none")
    # A method's own settings in --model_args (contextual_ratio=...) go to the points of the methods that have them.
    options = {name: fixed.pop(name) for name in OPTION_ARGS if name in fixed}
    declared = {option.name for strategy, _ in methods for option in STRATEGIES.get(strategy).options}
    if unused := sorted(set(options) - declared):
        raise SweepError(f"--model_args sets {', '.join(unused)}, which none of --strategies takes")
    points = []
    for plan in plans:
        own = {option.name for option in STRATEGIES.get(dict(plan)["strategy"]).options}
        args = {**fixed, **{name: value for name, value in options.items() if name in own}, **dict(plan)}
        points.append(Point(PruningConfig.from_model_args(args)[0], plan))
    return list({point.label: point for point in points}.values())


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

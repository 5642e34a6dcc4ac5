"""What a sweep evaluates: its points (pruning configs), checked before any weights load, and its tasks."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fopru_eval.core.config import PRUNING_ARGS, PruningConfig
from fopru_eval.core.strategies import STRATEGIES

# Output types only lmms-eval's simple model class can answer (its chat task class accepts generation only).
LOGLIKELIHOOD_TYPES = ("loglikelihood", "multiple_choice")
# The budget is what a sweep varies, so the user's --model_args must leave it out.
SWEPT_ARGS = ("strategy", "keep_ratio", "keep_tokens")


class SweepError(ValueError):
    """A sweep that cannot run as asked; raised before any weights load."""


@dataclass(frozen=True)
class Point:
    """One pruning config of a sweep."""

    config: PruningConfig

    @property
    def keep_ratio(self) -> float:
        return float(self.config.keep_ratio) if self.config.selection.uses_budget else 1.0

    @property
    def label(self) -> str:
        return f"{self.config.strategy}@{self.keep_ratio:g}"

    def model_args(self, base: str) -> str:
        """The ``--model_args`` that make ``lmms-eval`` alone evaluate this point."""
        budget = f"strategy={self.config.strategy}"
        if self.config.selection.uses_budget:
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
    pruning = [strategy for strategy in strategies if STRATEGIES.get(strategy).uses_budget]
    if len(pruning) < len(strategies) or 1.0 in keep_ratios:
        budgets.append(("none", None))
    for strategy in pruning:
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

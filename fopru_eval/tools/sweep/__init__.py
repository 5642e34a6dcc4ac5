"""``fopru-eval sweep``: one loaded model, every pruning config through lmms-eval, one accuracy-versus-tokens curve."""

from fopru_eval.tools.sweep.options import add_arguments, run
from fopru_eval.tools.sweep.plan import (
    Point,
    SweepError,
    leaf_task_configs,
    needs_simple_class,
    plan_points,
    resolve_tasks,
)
from fopru_eval.tools.sweep.results import point_row, visual_token_stats, write_point, write_summary
from fopru_eval.tools.sweep.run import run_sweep

__all__ = [
    "Point",
    "SweepError",
    "add_arguments",
    "leaf_task_configs",
    "needs_simple_class",
    "plan_points",
    "point_row",
    "resolve_tasks",
    "run",
    "run_sweep",
    "visual_token_stats",
    "write_point",
    "write_summary",
]

"""The pruning core: tensors only. No ``torch.nn`` modules, no transformers, no lmms-eval (a test enforces it).

config (what users type) -> scoring (significance from queries and keys) -> strategies (which tokens per view) ->
layout (views and row markers of an image's packed tokens) -> sequence (placeholders dropped, batch re-padded).
"""

from fopru_eval.core.budget import Budget
from fopru_eval.core.config import PRUNING_ARGS, PruningConfig, select_tokens
from fopru_eval.core.layout import ImageLayout, View
from fopru_eval.core.registry import PruningConfigError
from fopru_eval.core.scoring import SCORERS, Scorer, register_scorer
from fopru_eval.core.strategies import STRATEGIES, Strategy, apply_strategy, register_strategy

__all__ = [
    "PRUNING_ARGS",
    "SCORERS",
    "STRATEGIES",
    "Budget",
    "ImageLayout",
    "PruningConfig",
    "PruningConfigError",
    "Scorer",
    "Strategy",
    "View",
    "apply_strategy",
    "register_scorer",
    "register_strategy",
    "select_tokens",
]

"""The pruning configuration users type in ``--model_args``, parsed and validated before any weights load.

``strategy`` and ``significance`` are names in the strategy and scorer registries (``strategies.py``, ``scoring.py``,
``peers.py``), including a user's own ``package.module:function``; a method's own settings (``OPTION_ARGS``, e.g.
VisionZip's ``contextual_ratio``) are accepted for the strategy that declares them; everything else is a plain value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

import fopru_eval.core.peers  # noqa: F401  (registers the peer methods)
from fopru_eval.core.budget import Budget
from fopru_eval.core.registry import PruningConfigError
from fopru_eval.core.scoring import READINGS, SCORERS, Scorer
from fopru_eval.core.strategies import (
    LLM_LAYER,
    POSITION_MODES,
    STRATEGIES,
    Strategy,
    apply_strategy,
    parse_number,
)

# The settings of the built-in methods (and every in-LLM strategy's llm_layer), each accepted with its strategy only.
OPTION_ARGS = tuple(
    dict.fromkeys([LLM_LAYER.name] + [o.name for n in STRATEGIES.names() for o in STRATEGIES.get(n).options])
)
# Model args that belong to pruning; everything else passes through to the wrapped model.
PRUNING_ARGS = ("strategy", "keep_ratio", "keep_tokens", "significance", "scores", "positions", "seed", *OPTION_ARGS)
# Which reading of the attention map the built-in scorers use by default (chosen on the demo's dev split: README).
DEFAULT_SCORES = "softmax"

__all__ = ["POSITION_MODES", "PRUNING_ARGS", "PruningConfig", "PruningConfigError", "select_tokens"]


@dataclass(frozen=True)
class PruningConfig:
    """How many visual tokens to keep per image, and how to choose them.

    ``keep_ratio`` and ``keep_tokens`` are exclusive budgets per image (per view for multi-view models).
    ``strategy="none"`` keeps every token and must reproduce the unpruned model exactly.
    ``significance``: the scorer (default ``auto``, or the one the strategy is defined with, e.g. VisionZip's ``cls``).
    ``positions``: ``compact`` re-indexes the pruned sequence contiguously (the paper's reorder step);
    ``original`` gives each kept token the position id it had before pruning (default: the strategy's first accepted).
    ``options``: the strategy's own settings as (name, value) pairs; those not given take the method's defaults.
    """

    strategy: str
    keep_ratio: float | None = None
    keep_tokens: int | None = None
    significance: str | None = None
    scores: str = DEFAULT_SCORES
    positions: str | None = None
    seed: int = 0
    options: tuple[tuple[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        selection = self.selection  # looked up first: an unknown strategy is the first thing to hear about
        if selection.significance is not None and self.significance not in (None, selection.significance):
            raise PruningConfigError(
                f"strategy={self.strategy} scores tokens with significance={selection.significance}; drop "
                f"significance={self.significance} (accepted values: {selection.significance})"
            )
        object.__setattr__(self, "significance", self.significance or selection.significance or "auto")
        object.__setattr__(self, "positions", self.positions or selection.positions[0])
        object.__setattr__(self, "options", self._checked_options(selection))
        SCORERS.get(self.significance)
        if self.scores not in READINGS:
            raise PruningConfigError(f"scores={self.scores!r} is not supported; accepted values: {', '.join(READINGS)}")
        if self.positions not in selection.positions:
            why = " (tokens dropped inside the LLM keep their position ids, as in FastV)" if self.in_llm else ""
            raise PruningConfigError(
                f"positions={self.positions!r} is not supported with strategy={self.strategy}; accepted values: "
                f"{', '.join(selection.positions)}{why}"
            )
        if self.keep_ratio is not None and self.keep_tokens is not None:
            raise PruningConfigError(
                "keep_ratio and keep_tokens are exclusive: give keep_ratio (a fraction in (0, 1]) "
                "or keep_tokens (an integer >= 1), not both"
            )
        if self.keep_ratio is not None and not (0.0 < self.keep_ratio <= 1.0):
            raise PruningConfigError(
                f"keep_ratio={self.keep_ratio} is out of range; accepted values: 0 < keep_ratio <= 1"
            )
        if self.keep_tokens is not None and self.keep_tokens < 1:
            raise PruningConfigError(f"keep_tokens={self.keep_tokens} is out of range; accepted values: integers >= 1")
        if not selection.uses_budget:
            if not self.budget.keeps_everything:
                raise PruningConfigError(
                    f"strategy={self.strategy} keeps every visual token; drop keep_ratio/keep_tokens or set "
                    "keep_ratio=1"
                )
        elif self.keep_ratio is None and self.keep_tokens is None:
            raise PruningConfigError(
                f"strategy={self.strategy} needs a budget: keep_ratio (a fraction in (0, 1]) "
                "or keep_tokens (an integer >= 1), e.g. strategy=rank,keep_tokens=64"
            )

    def _checked_options(self, selection: Strategy) -> tuple[tuple[str, Any], ...]:
        """Every option of the strategy, given or default, in its declared order; an option it lacks is an error."""
        given = dict(self.options)
        declared = {option.name: option for option in selection.options}
        if unknown := sorted(set(given) - set(declared)):
            accepted = ", ".join(declared) or "none"
            raise PruningConfigError(
                f"{', '.join(unknown)} do{'es' if len(unknown) == 1 else ''} not apply to strategy={self.strategy}; "
                f"its settings: {accepted}"
            )
        return tuple((name, option.parse(given.get(name, option.default))) for name, option in declared.items())

    @property
    def option_values(self) -> dict[str, Any]:
        """The strategy's settings by name."""
        return dict(self.options)

    @property
    def in_llm(self) -> bool:
        """Whether the strategy drops tokens inside the LLM (FastV's stage) instead of before it."""
        return self.selection.stage == "llm"

    @property
    def selection(self) -> Strategy:
        """The registered strategy ``strategy`` names."""
        return STRATEGIES.get(self.strategy)

    @property
    def scorer(self) -> Scorer:
        """The registered scorer ``significance`` names, reading the attention as ``scores`` says."""
        return SCORERS.get(self.significance).reading(self.scores)

    @property
    def budget(self) -> Budget:
        return Budget(self.keep_ratio, self.keep_tokens)

    @property
    def needs_scores(self) -> bool:
        """Whether the vision tower's attention is captured: a vision-stage strategy that reads scores or keys."""
        selection = self.selection
        return selection.stage == "vision" and (selection.needs_scores or "keys" in selection.reads)

    @classmethod
    def from_model_args(cls, model_args: dict[str, Any]) -> tuple[PruningConfig, dict[str, Any]]:
        """Split lmms-eval model args into a validated config and the args meant for the wrapped model.

        Values may arrive as strings (``--model_args`` is parsed loosely), so they are converted here.
        """
        rest = {k: v for k, v in model_args.items() if k not in PRUNING_ARGS}
        if "strategy" not in model_args:
            raise PruningConfigError(
                f"strategy is required; accepted values: {STRATEGIES.accepted()} "
                "(e.g. strategy=rank,keep_tokens=64, or strategy=none for the unpruned model)"
            )
        config = cls(
            strategy=str(model_args["strategy"]),
            keep_ratio=_as_number(model_args, "keep_ratio", float),
            keep_tokens=_as_number(model_args, "keep_tokens", int),
            significance=_as_name(model_args, "significance"),
            scores=str(model_args.get("scores", DEFAULT_SCORES)),
            positions=_as_name(model_args, "positions"),
            seed=_as_number(model_args, "seed", int) or 0,
            options=tuple((name, model_args[name]) for name in OPTION_ARGS if name in model_args),
        )
        return config, rest

    def tokens_to_keep(self, num_tokens: int) -> int:
        """Token budget for one view of ``num_tokens`` visual tokens: floor(N * r) or keep_tokens, at least 1."""
        return self.budget.tokens(num_tokens)

    def rows_to_keep(self, num_rows: int, num_cols: int) -> int:
        """Row budget for ``strategy=row``: floor(R * r) rows, or the whole rows keep_tokens allows; at least 1."""
        return self.budget.rows(num_rows, num_cols)

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "keep_ratio": self.keep_ratio,
            "keep_tokens": self.keep_tokens,
            "significance": self.significance,
            "scores": self.scores,
            "positions": self.positions,
            "seed": self.seed,
            **self.option_values,
        }


def select_tokens(
    config: PruningConfig,
    grid: tuple[int, int],
    significance: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Kept indices, sorted ascending, of one view whose ``rows * cols`` tokens lie on ``grid`` in raster order."""
    return apply_strategy(
        config.selection, config.budget, grid, significance, generator, options=config.option_values
    ).kept


def _as_name(model_args: dict[str, Any], name: str) -> str | None:
    value = model_args.get(name)
    return None if value is None else str(value)


def _as_number(model_args: dict[str, Any], name: str, kind: type) -> Any:
    value = model_args.get(name)
    return None if value is None else parse_number(name, value, kind)

"""Strategies: which visual tokens of one view to keep (FoPru, arXiv 2411.14164, section 3.3), as a registry.

A strategy is one function ``select(scores, budget, grid, generator, **inputs) -> indices``:
  scores     the (tokens,) significance of the view's tokens in raster order, or None if it declares
             ``needs_scores=False`` (then no attention is captured at all);
  budget     the config's ``Budget``: ``budget.tokens(n)`` and ``budget.rows(rows, cols)`` give the counts;
  grid       (rows, cols) of the view; tokens = rows * cols;
  generator  a ``torch.Generator`` seeded per doc, image and view, for strategies that draw at random;
  inputs     what else it declares it ``reads`` (``INPUTS``), each (tokens, width) in the same raster order, and its
             ``options`` (``Option``) as keywords.
It returns the kept indices; the driver sorts them ascending (the reorder step), so the LLM sees kept tokens in their
original raster order, and refuses duplicates or indices off the grid. Or it returns a ``Merge``: the kept indices and,
for each, the weights that mix the view's tokens into the features it carries (VisionZip's contextual tokens). Built-in
ties break towards the lower index, so a run is reproducible.

Where the scores come from is the strategy's ``stage``: ``vision`` (the tower's attention, by the config's scorer, and
selection before the LLM) or ``llm`` (the attention inside the LLM, and the tokens dropped after one of its layers:
``fopru_eval/families/llm_stage.py``, FastV's stage).

Adding a strategy is one registration (``@register_strategy("name")``: FoPru's and the controls here, the peer methods
in ``peers.py``), or, from a user's own code, nothing: ``strategy=my_pkg.pruning:keep_center`` names any function
with this signature (see ``registry.py``); attributes on it (``reads``, ``stage``, ``needs_scores``) declare the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from fopru_eval.core.budget import Budget
from fopru_eval.core.registry import PruningConfigError, Registry

Grid = tuple[int, int]
SelectFunction = Callable[..., "torch.Tensor | Merge"]

# How each pruned sequence is numbered: ``compact`` re-indexes it contiguously (the paper's reorder step);
# ``original`` gives each kept token the position id it had before pruning.
POSITION_MODES = ("compact", "original")
# What a strategy may read besides the scores, per token of the view (``Strategy.reads``):
#   features        the features the LLM receives for them (after the projector or merger);
#   tower_features  the tower's features the projector reads (before it), where the family has a separate projector;
#   keys            the keys of the scored tower layer, averaged over heads.
INPUTS = ("features", "tower_features", "keys")
STAGES = ("vision", "llm")


@dataclass(frozen=True)
class Merge:
    """Kept tokens that carry merged features: kept token ``kept[j]`` carries ``weights[j] @ tokens``, a mix of the
    view's tokens (each row of ``weights`` has one weight per token of the view). The driver mixes the tower's
    features where the family has them (then projects), else the features the LLM receives. A merged token counts as
    one kept token."""

    kept: torch.Tensor
    weights: torch.Tensor


def parse_number(name: str, value: Any, kind: type) -> int | float:
    """A model arg's value (often a string: ``--model_args`` is parsed loosely) as ``kind``, int or float; a clear
    error naming the argument otherwise."""
    try:
        number = float(value)
        if kind is int and not number.is_integer():
            raise ValueError
    except (TypeError, ValueError):
        expected = "an integer" if kind is int else "a number"
        raise PruningConfigError(f"{name}={value!r} is not {expected}") from None
    return kind(number)


@dataclass(frozen=True)
class Option:
    """A setting of a method, given in ``--model_args`` by ``name``: a number of ``kind`` (int or float) in
    ``low`` .. ``high``, both inclusive."""

    name: str
    default: float
    kind: type
    low: float
    high: float

    def parse(self, value: Any) -> int | float:
        number = parse_number(self.name, value, self.kind)
        if not self.low <= number <= self.high:
            what = "integers" if self.kind is int else "numbers"
            raise PruningConfigError(
                f"{self.name}={value} is out of range; accepted values: {what} {self.low:g} <= {self.name} <= "
                f"{self.high:g}"
            )
        return number


@dataclass(frozen=True)
class Strategy:
    """A selection rule. ``needs_scores``: it reads the significance (so the tower runs with the capture on, or, for
    the ``llm`` stage, the attention row is computed). ``uses_budget``: it takes keep_ratio/keep_tokens; one that does
    not (``none``) keeps every token. ``reads``: further ``INPUTS`` it is handed. ``significance``: the scorer the
    method is defined with (None: the config's). ``stage``: ``STAGES``. ``options``: its settings; a ``vision``
    strategy is handed them as keywords, an ``llm`` one configures its stage with them. ``positions``: the
    ``POSITION_MODES`` it accepts, the first its default. ``merges``: it may return a ``Merge``."""

    name: str
    select: SelectFunction
    needs_scores: bool = True
    uses_budget: bool = True
    reads: tuple[str, ...] = ()
    significance: str | None = None
    stage: str = "vision"
    options: tuple[Option, ...] = ()
    positions: tuple[str, ...] = POSITION_MODES
    merges: bool = False

    def __post_init__(self) -> None:
        if unknown := [name for name in self.reads if name not in INPUTS]:
            raise PruningConfigError(f"strategy={self.name} reads {unknown}; accepted: {', '.join(INPUTS)}")
        if self.stage not in STAGES:
            raise PruningConfigError(f"strategy={self.name} has stage {self.stage!r}; accepted: {', '.join(STAGES)}")


# Every strategy that runs inside the LLM drops the visual tokens after this LLM layer (FastV's K, the paper's 2).
LLM_LAYER = Option("llm_layer", 2, int, 1, 1 << 20)


def _wrap_user_function(spec: str, function: Callable) -> Strategy:
    # A user's function declares the rest with attributes: keep_center.needs_scores = False (saves the capture),
    # .reads = ("features",), .merges = True, .stage = "llm" (its scores are then the LLM's attention, and the
    # tokens are dropped after llm_layer).
    stage = str(getattr(function, "stage", "vision"))
    return Strategy(
        spec,
        function,
        needs_scores=bool(getattr(function, "needs_scores", True)),
        reads=tuple(getattr(function, "reads", ())),
        stage=stage,
        options=(LLM_LAYER,) if stage == "llm" else (),
        positions=("original",) if stage == "llm" else POSITION_MODES,
        merges=bool(getattr(function, "merges", False)),
    )


STRATEGIES: Registry[Strategy] = Registry(
    "strategy",
    Strategy,
    entry_point_group="fopru_eval.strategies",
    signature=("scores", "budget", "grid", "generator"),
    wrap=_wrap_user_function,
)


def register_strategy(name: str, **declared: Any) -> Callable[[SelectFunction], SelectFunction]:
    """Decorator: register ``select`` under ``name``; ``declared`` are ``Strategy``'s other fields."""

    def register(select: SelectFunction) -> SelectFunction:
        STRATEGIES.add(name, Strategy(name, select, **declared))
        return select

    return register


# ----- the selection rules -------------------------------------------------------------------------------------------


def select_rank(significance: torch.Tensor, num_keep: int) -> torch.Tensor:
    """The ``num_keep`` most significant tokens of a (tokens,) significance vector: the global view."""
    # A stable descending sort puts the lower index first among equal scores.
    order = torch.sort(significance, descending=True, stable=True).indices
    return order[:num_keep].sort().values


def select_rows(significance: torch.Tensor, grid: Grid, num_rows: int) -> torch.Tensor:
    """Whole rows of the (rows, cols) patch grid with the largest summed significance: continuous local context."""
    rows, cols = grid
    if significance.numel() != rows * cols:
        raise ValueError(f"significance has {significance.numel()} tokens, but the grid is {rows} x {cols}")
    row_scores = significance.reshape(rows, cols).sum(dim=1)
    kept_rows = select_rank(row_scores, num_rows)
    columns = torch.arange(cols, device=significance.device)
    return (kept_rows.unsqueeze(1) * cols + columns).flatten()


def select_random(num_tokens: int, num_keep: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random subset: the control every accuracy-versus-tokens curve needs."""
    return torch.randperm(num_tokens, generator=generator)[:num_keep].sort().values


def select_uniform(grid: Grid, num_keep: int) -> torch.Tensor:
    """``num_keep`` tokens spread evenly over the (rows, cols) grid, whatever the image: the downsampling control.

    A lattice of r x c cells' centres with about the grid's aspect (r * c <= num_keep, so 24 x 24 -> 12 x 12 at 144
    tokens and 8 x 8 at 64); the tokens the lattice leaves of the budget are spread evenly over the rest, in raster
    order, so the count is exactly ``num_keep`` like every other strategy's.
    """
    rows, cols = grid
    lattice_rows = max(1, min(rows, num_keep, round(math.sqrt(num_keep * rows / cols))))
    lattice_cols = max(1, min(cols, num_keep // lattice_rows))
    centres = lambda n, of: ((torch.arange(n) + 0.5) * of / n).long()  # noqa: E731
    lattice = (centres(lattice_rows, rows).unsqueeze(1) * cols + centres(lattice_cols, cols)).flatten()
    missing = num_keep - lattice.numel()
    if missing > 0:
        rest = torch.ones(rows * cols, dtype=torch.bool)
        rest[lattice] = False
        others = rest.nonzero().flatten()
        lattice = torch.cat([lattice, others[centres(missing, others.numel())]])
    return lattice.sort().values


@register_strategy("rank")
def rank(scores: torch.Tensor, budget: Budget, grid: Grid, generator: torch.Generator) -> torch.Tensor:
    """FoPru's global view: the budget's most significant tokens."""
    return select_rank(scores, budget.tokens(grid[0] * grid[1]))


@register_strategy("row")
def row(scores: torch.Tensor, budget: Budget, grid: Grid, generator: torch.Generator) -> torch.Tensor:
    """FoPru's local view: the budget's most significant whole rows."""
    return select_rows(scores, grid, budget.rows(*grid))


@register_strategy("random", needs_scores=False)
def random(scores: None, budget: Budget, grid: Grid, generator: torch.Generator) -> torch.Tensor:
    if generator is None:
        raise ValueError("strategy=random needs a seeded torch.Generator")
    return select_random(grid[0] * grid[1], budget.tokens(grid[0] * grid[1]), generator)


@register_strategy("none", needs_scores=False, uses_budget=False)
def keep_all(scores: None, budget: Budget, grid: Grid, generator: torch.Generator) -> torch.Tensor:
    """Every token: reproduces the unpruned model exactly."""
    return torch.arange(grid[0] * grid[1])


@register_strategy("uniform", needs_scores=False)
def uniform(scores: None, budget: Budget, grid: Grid, generator: torch.Generator) -> torch.Tensor:
    """Tokens spread evenly over the grid: the "downsample" control, which a 2025 benchmark found beats many pruning
    methods."""
    return select_uniform(grid, budget.tokens(grid[0] * grid[1]))


# ----- applying a strategy -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """One view's kept indices, sorted ascending, and, where the strategy merges, each one's row of weights."""

    kept: torch.Tensor
    weights: torch.Tensor | None = None


def apply_strategy(
    strategy: Strategy,
    budget: Budget,
    grid: Grid,
    significance: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    inputs: dict[str, torch.Tensor] | None = None,
    options: dict[str, Any] | None = None,
) -> Selection:
    """The selection of one view whose ``rows * cols`` tokens lie on ``grid`` in raster order; ``inputs`` holds what
    the strategy ``reads``, ``options`` its settings.

    A strategy's answer is checked: integer indices on the grid, each at most once, and merge weights with one row per
    kept token and one column per token of the view (a user's rule may be wrong).
    """
    if strategy.needs_scores and significance is None:
        raise ValueError(f"strategy={strategy.name} needs the significance of every token")
    inputs = inputs or {}
    if missing := [name for name in strategy.reads if name not in inputs]:
        raise ValueError(f"strategy={strategy.name} reads {missing}, which this view does not have")
    given = {name: inputs[name] for name in strategy.reads} | (
        options if strategy.stage == "vision" and options else {}
    )
    answer = strategy.select(significance if strategy.needs_scores else None, budget, grid, generator, **given)
    kept, weights = (answer.kept, answer.weights) if isinstance(answer, Merge) else (answer, None)
    if weights is not None and not strategy.merges:
        raise ValueError(f"strategy={strategy.name} returned a Merge but does not declare merges=True")
    num_tokens = grid[0] * grid[1]
    if not isinstance(kept, torch.Tensor) or kept.dim() != 1 or kept.is_floating_point() or kept.is_complex():
        raise ValueError(f"strategy={strategy.name} must return a 1-D tensor of integer token indices")
    kept, order = kept.sort()
    if kept.numel() and (kept[0] < 0 or kept[-1] >= num_tokens):
        raise ValueError(f"strategy={strategy.name} returned indices outside 0..{num_tokens - 1} of a {grid} grid")
    if kept.numel() > 1 and bool((kept[1:] == kept[:-1]).any()):
        raise ValueError(f"strategy={strategy.name} returned the same token twice")
    if weights is not None:
        if weights.shape != (kept.numel(), num_tokens):
            raise ValueError(
                f"strategy={strategy.name} returned merge weights of shape {tuple(weights.shape)}; expected "
                f"(kept tokens, view tokens) = ({kept.numel()}, {num_tokens})"
            )
        weights = weights[order.to(weights.device)]
    return Selection(kept, weights)

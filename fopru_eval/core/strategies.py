"""Strategies: which visual tokens of one view to keep (FoPru, arXiv 2411.14164, section 3.3), as a registry.

A strategy is one function ``select(scores, budget, grid, generator) -> indices``:
  scores     the (tokens,) significance of the view's tokens in raster order, or None if it declares
             ``needs_scores=False`` (then no attention is captured at all);
  budget     the config's ``Budget``: ``budget.tokens(n)`` and ``budget.rows(rows, cols)`` give the counts;
  grid       (rows, cols) of the view; tokens = rows * cols;
  generator  a ``torch.Generator`` seeded per doc, image and view, for strategies that draw at random.
It returns the kept indices; the driver sorts them ascending (the reorder step), so the LLM sees kept tokens in their
original raster order, and refuses duplicates or indices off the grid. Built-in ties break towards the lower index,
so a run is reproducible.

Adding a strategy is one registration here (``@register_strategy("name")``), or, from a user's own code, nothing:
``strategy=my_pkg.pruning:keep_center`` names any function with this signature (see ``registry.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fopru_eval.core.budget import Budget
from fopru_eval.core.registry import Registry

Grid = tuple[int, int]
SelectFunction = Callable[[torch.Tensor | None, Budget, Grid, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class Strategy:
    """A selection rule. ``needs_scores``: it reads the significance (so the tower runs with the capture on).
    ``uses_budget``: it takes keep_ratio/keep_tokens; one that does not (``none``) keeps every token."""

    name: str
    select: SelectFunction
    needs_scores: bool = True
    uses_budget: bool = True


def _wrap_user_function(spec: str, function: Callable) -> Strategy:
    # A user's function may say it needs no scores (saving the capture) with an attribute: keep_center.needs_scores
    # = False; by default it is handed them.
    return Strategy(spec, function, needs_scores=bool(getattr(function, "needs_scores", True)))


STRATEGIES: Registry[Strategy] = Registry(
    "strategy",
    Strategy,
    entry_point_group="fopru_eval.strategies",
    signature=("scores", "budget", "grid", "generator"),
    wrap=_wrap_user_function,
)


def register_strategy(
    name: str, *, needs_scores: bool = True, uses_budget: bool = True
) -> Callable[[SelectFunction], SelectFunction]:
    """Decorator: register ``select`` under ``name``."""

    def register(select: SelectFunction) -> SelectFunction:
        STRATEGIES.add(name, Strategy(name, select, needs_scores, uses_budget))
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


def apply_strategy(
    strategy: Strategy,
    budget: Budget,
    grid: Grid,
    significance: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Kept indices, sorted ascending, of one view whose ``rows * cols`` tokens lie on ``grid`` in raster order.

    A strategy's answer is checked: integer indices on the grid, each at most once (a user's rule may be wrong).
    """
    if strategy.needs_scores and significance is None:
        raise ValueError(f"strategy={strategy.name} needs the significance of every token")
    kept = strategy.select(significance if strategy.needs_scores else None, budget, grid, generator)
    num_tokens = grid[0] * grid[1]
    if not isinstance(kept, torch.Tensor) or kept.dim() != 1 or kept.is_floating_point() or kept.is_complex():
        raise ValueError(f"strategy={strategy.name} must return a 1-D tensor of integer token indices")
    kept = kept.sort().values
    if kept.numel() and (kept[0] < 0 or kept[-1] >= num_tokens):
        raise ValueError(f"strategy={strategy.name} returned indices outside 0..{num_tokens - 1} of a {grid} grid")
    if kept.numel() > 1 and bool((kept[1:] == kept[:-1]).any()):
        raise ValueError(f"strategy={strategy.name} returned the same token twice")
    return kept

"""Which visual tokens to keep: rank, row, random or none, per image (FoPru, arXiv 2411.14164, section 3.3).

Every function returns the kept token indices sorted ascending (the reorder step), so the LLM sees kept tokens in
their original raster order. Ties break towards the lower index, so a run is reproducible.
"""

from __future__ import annotations

import torch

from fopru_eval.config import PruningConfig


def select_rank(significance: torch.Tensor, num_keep: int) -> torch.Tensor:
    """The ``num_keep`` most significant tokens of a (tokens,) significance vector: the global view."""
    # A stable descending sort puts the lower index first among equal scores.
    order = torch.sort(significance, descending=True, stable=True).indices
    return order[:num_keep].sort().values


def select_rows(significance: torch.Tensor, grid: tuple[int, int], num_rows: int) -> torch.Tensor:
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


def select_tokens(
    config: PruningConfig,
    grid: tuple[int, int],
    significance: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Kept indices, sorted ascending, for one image whose ``rows * cols`` tokens lie on ``grid`` in raster order.

    ``significance`` is needed by rank and row; ``generator`` by random. The result lives on the CPU for random and
    on ``significance``'s device otherwise.
    """
    rows, cols = grid
    num_tokens = rows * cols
    if config.strategy == "none":
        device = significance.device if significance is not None else None
        return torch.arange(num_tokens, device=device)
    if config.strategy == "random":
        if generator is None:
            raise ValueError("strategy=random needs a seeded torch.Generator")
        return select_random(num_tokens, config.tokens_to_keep(num_tokens), generator)
    if significance is None:
        raise ValueError(f"strategy={config.strategy} needs the significance of every token")
    if config.strategy == "rank":
        return select_rank(significance, config.tokens_to_keep(num_tokens))
    if config.strategy == "row":
        return select_rows(significance, grid, config.rows_to_keep(rows, cols))
    raise ValueError(f"strategy={config.strategy!r} is not supported")

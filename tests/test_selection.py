"""Selection on hand-built significance and attention maps whose answer is obvious, plus properties."""

from __future__ import annotations

import pytest
import torch

from fopru_eval.core.attention import patch_significance
from fopru_eval.core.config import PruningConfig, select_tokens
from fopru_eval.core.strategies import select_random, select_rank, select_rows


def test_rank_keeps_the_largest_in_raster_order() -> None:
    scores = torch.tensor([0.1, 0.9, 0.3, 0.8, 0.0, 0.7])
    assert select_rank(scores, 3).tolist() == [1, 3, 5]


def test_rank_ties_break_towards_the_lower_index() -> None:
    scores = torch.tensor([0.5, 0.2, 0.5, 0.5, 0.1])
    assert select_rank(scores, 2).tolist() == [0, 2]
    assert select_rank(torch.zeros(10), 4).tolist() == [0, 1, 2, 3]


def test_row_keeps_whole_rows_of_a_rectangular_grid() -> None:
    # 3 rows x 4 columns; row 2 has the largest sum, then row 0, although row 1 holds the single largest token.
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 3.5, 0.0], [2.0, 2.0, 2.0, 2.0]]).flatten()
    assert select_rows(scores, (3, 4), 1).tolist() == [8, 9, 10, 11]
    assert select_rows(scores, (3, 4), 2).tolist() == [0, 1, 2, 3, 8, 9, 10, 11]
    # 4 rows x 2 columns: grids need not be square.
    tall = torch.tensor([0.0, 0.0, 5.0, 5.0, 1.0, 1.0, 0.0, 0.0])
    assert select_rows(tall, (4, 2), 1).tolist() == [2, 3]


def test_row_rejects_a_grid_that_does_not_match() -> None:
    with pytest.raises(ValueError, match="grid is 5 x 5"):
        select_rows(torch.zeros(24), (5, 5), 1)


def test_hand_built_attention_map_picks_the_attended_patch() -> None:
    # CLS + 4 patches. Every patch sends all its attention to patch 2: column significance singles it out.
    attention = torch.zeros(1, 5, 5)
    attention[0, :, 3] = 1.0  # index 3 = patch 2 once the CLS token (index 0) is dropped
    significance = patch_significance(attention, num_prefix_tokens=1, mode="auto")
    assert significance.argmax().item() == 2
    assert select_rank(significance[0], 1).tolist() == [2]
    # Row significance is flat here (every row sums to the same), so auto must have chosen the column view.
    assert torch.equal(significance, patch_significance(attention, 1, "column"))


def test_auto_picks_row_significance_when_it_varies_more_and_on_ties() -> None:
    # Patch 1 attends strongly to everything (a large row), columns receive evenly: row varies more.
    attention = torch.full((1, 4, 4), 0.1)
    attention[0, 1, :] = 0.9
    assert torch.equal(patch_significance(attention, 0, "auto"), patch_significance(attention, 0, "row"))
    uniform = torch.full((1, 4, 4), 0.25)
    assert torch.equal(patch_significance(uniform, 0, "auto"), patch_significance(uniform, 0, "row"))


@pytest.mark.parametrize("strategy", ["rank", "row", "random"])
@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.25, 0.11, 0.01])
@pytest.mark.parametrize("grid", [(6, 6), (4, 9), (24, 24)])
def test_kept_count_sorted_unique_and_deterministic(strategy: str, ratio: float, grid: tuple[int, int]) -> None:
    rows, cols = grid
    config = PruningConfig(strategy=strategy, keep_ratio=ratio)
    scores = torch.rand(rows * cols, generator=torch.Generator().manual_seed(1))
    kept = select_tokens(config, grid, scores, torch.Generator().manual_seed(7))
    expected = config.rows_to_keep(rows, cols) * cols if strategy == "row" else config.tokens_to_keep(rows * cols)
    assert kept.numel() == expected
    assert torch.equal(kept, kept.sort().values) and kept.unique().numel() == kept.numel()
    assert 0 <= kept.min() and kept.max() < rows * cols
    again = select_tokens(config, grid, scores.clone(), torch.Generator().manual_seed(7))
    assert torch.equal(kept, again)


def test_random_depends_on_the_seed_only() -> None:
    first = select_random(100, 10, torch.Generator().manual_seed(3))
    assert torch.equal(first, select_random(100, 10, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, select_random(100, 10, torch.Generator().manual_seed(4)))


def test_none_keeps_everything() -> None:
    kept = select_tokens(PruningConfig(strategy="none"), (3, 5), torch.rand(15))
    assert kept.tolist() == list(range(15))

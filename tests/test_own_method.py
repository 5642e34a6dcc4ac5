"""A researcher's own strategy or scorer, named in --model_args as package.module:function, without a fork."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import lmms_eval, results_of
from fopru_eval.core.config import PruningConfig, PruningConfigError, select_tokens

# The README's example, written to a module of the user's own.
USER_MODULE = '''
import torch


def keep_center(scores, budget, grid, generator):
    """The budget's tokens nearest the centre of the grid: no attention needed."""
    rows, cols = grid
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    distance = (r - (rows - 1) / 2) ** 2 + (c - (cols - 1) / 2) ** 2
    return torch.sort(distance.flatten(), stable=True).indices[: budget.tokens(rows * cols)]


keep_center.needs_scores = False


def lowest_scores(scores, budget, grid, generator):
    """The least significant tokens: the opposite of FoPru's rank."""
    return torch.sort(scores, stable=True).indices[: budget.tokens(grid[0] * grid[1])]


def two_args(scores, budget):
    return torch.arange(1)


def out_of_grid(scores, budget, grid, generator):
    return torch.tensor([grid[0] * grid[1]])


def first_token_scores(queries, keys, scale, num_prefix_tokens):
    """A scorer: the attention logits of the first patch's query."""
    first = queries[:, :, num_prefix_tokens : num_prefix_tokens + 1]
    return (first @ keys[:, :, num_prefix_tokens:].transpose(-1, -2)).mean(dim=1)[:, 0] * scale
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"my_pruning_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_a_user_strategy_selects_by_its_own_rule(user_module: str) -> None:
    config = PruningConfig(strategy=f"{user_module}:keep_center", keep_tokens=4)
    assert not config.needs_scores
    assert select_tokens(config, (4, 4), None, torch.Generator()).tolist() == [5, 6, 9, 10]
    lowest = PruningConfig(strategy=f"{user_module}:lowest_scores", keep_ratio=0.5)
    assert lowest.needs_scores
    assert select_tokens(lowest, (2, 2), torch.tensor([0.4, 0.1, 0.3, 0.2])).tolist() == [1, 3]


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        ("no_such_module_anywhere:keep", "cannot import no_such_module_anywhere:keep"),
        ("{module}:missing", "cannot import {module}:missing"),
        ("{module}:two_args", r"must take \(scores, budget, grid, generator\)"),
        (
            "keep_centre",
            "accepted values: rank, row, random, none, uniform, visionzip, vispruner, divprune, fastv, or package",
        ),
    ],
)
def test_a_bad_user_strategy_is_refused_clearly(user_module: str, strategy: str, message: str) -> None:
    with pytest.raises(PruningConfigError, match=message.format(module=user_module)):
        PruningConfig(strategy=strategy.format(module=user_module), keep_tokens=4)


def test_a_user_strategy_that_leaves_the_grid_fails_loudly(user_module: str) -> None:
    config = PruningConfig(strategy=f"{user_module}:out_of_grid", keep_tokens=1)
    with pytest.raises(ValueError, match="outside 0..3"):
        select_tokens(config, (2, 2), torch.zeros(4))


def test_a_user_scorer_is_named_like_a_strategy(user_module: str) -> None:
    config = PruningConfig(strategy="rank", keep_tokens=1, significance=f"{user_module}:first_token_scores")
    queries = torch.zeros(1, 1, 3, 2)
    keys = torch.tensor([[[[0.0, 0.0], [0.0, 0.0], [5.0, 0.0]]]])
    queries[0, 0, 1] = torch.tensor([1.0, 0.0])  # the first patch looks at patch 1 (key 2)
    assert config.scorer.score(queries, keys, 1.0, 1).argmax().item() == 1
    with pytest.raises(PruningConfigError, match=r"must take \(queries, keys, scale, num_prefix_tokens\)"):
        PruningConfig(strategy="rank", keep_tokens=1, significance=f"{user_module}:two_args")


def test_a_user_strategy_runs_through_lmms_eval(tiny_llava: Path, tmp_path: Path, user_module: str) -> None:
    output = tmp_path / "out"
    model_args = f"pretrained={tiny_llava},strategy={user_module}:keep_center,keep_tokens=4"
    run = lmms_eval(["--model", "llava_fopru", "--model_args", model_args, "--tasks", "fopru_shapes_gen",
                     "--batch_size", "2", "--limit", "4", "--device", "cpu"], output)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results, samples = results_of(output)
    assert "exact_match,none" in results["results"]["fopru_shapes_gen"]
    for sample in samples["fopru_shapes_gen"]:
        [counts] = sample["token_counts"]
        assert counts["visual_tokens_kept"] == 4 and counts["visual_tokens_total"] == 36

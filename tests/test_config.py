"""PruningConfig: budgets, and a clear error for every bad value."""

from __future__ import annotations

import pytest

from fopru_eval.core.config import PruningConfig, PruningConfigError


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"strategy": "rank", "keep_ratio": 0}, "keep_ratio=0"),
        ({"strategy": "rank", "keep_ratio": 1.5}, "0 < keep_ratio <= 1"),
        ({"strategy": "rank", "keep_ratio": -0.1}, "keep_ratio=-0.1"),
        ({"strategy": "rank", "keep_tokens": 0}, "integers >= 1"),
        ({"strategy": "rank", "keep_tokens": 2.5}, "keep_tokens=2.5 is not an integer"),
        ({"strategy": "rank", "keep_ratio": 0.5, "keep_tokens": 8}, "exclusive"),
        ({"strategy": "topk", "keep_ratio": 0.5}, "accepted values: rank, row, random, none"),
        ({"strategy": "rank", "keep_ratio": 0.5, "significance": "diag"}, "accepted values: auto, column, row"),
        ({"strategy": "rank", "keep_ratio": 0.5, "positions": "absolute"}, "accepted values: compact, original"),
        ({"strategy": "rank"}, "needs a budget"),
        ({"strategy": "none", "keep_ratio": 0.5}, "strategy=none keeps every visual token"),
        ({"keep_ratio": 0.5}, "strategy is required; accepted values: rank, row, random, none"),
        ({"strategy": "rank", "keep_ratio": "half"}, "keep_ratio='half' is not a number"),
    ],
)
def test_bad_values_name_the_argument_and_accepted_values(args: dict, message: str) -> None:
    with pytest.raises(PruningConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PruningConfig.from_model_args(args)


def test_model_args_split_into_pruning_and_the_rest() -> None:
    config, rest = PruningConfig.from_model_args(
        {"pretrained": "x", "strategy": "row", "keep_tokens": "64", "dtype": "bfloat16"}
    )
    assert config == PruningConfig(strategy="row", keep_tokens=64)
    assert rest == {"pretrained": "x", "dtype": "bfloat16"}


def test_budgets_follow_the_paper_floor_with_at_least_one() -> None:
    quarter = PruningConfig(strategy="rank", keep_ratio=0.25)
    assert quarter.tokens_to_keep(576) == 144
    assert PruningConfig(strategy="rank", keep_ratio=0.11).tokens_to_keep(576) == 63
    assert PruningConfig(strategy="rank", keep_ratio=0.29).tokens_to_keep(100) == 29
    assert PruningConfig(strategy="rank", keep_ratio=0.01).tokens_to_keep(36) == 1
    assert PruningConfig(strategy="rank", keep_ratio=1.0).tokens_to_keep(576) == 576
    assert PruningConfig(strategy="rank", keep_tokens=64).tokens_to_keep(36) == 36
    assert quarter.rows_to_keep(24, 24) == 6
    assert PruningConfig(strategy="row", keep_ratio=0.1).rows_to_keep(6, 6) == 1
    # An absolute budget keeps as many whole rows as fit, at least one.
    assert PruningConfig(strategy="row", keep_tokens=64).rows_to_keep(24, 24) == 2
    assert PruningConfig(strategy="row", keep_tokens=5).rows_to_keep(24, 24) == 1
    assert PruningConfig(strategy="none").tokens_to_keep(576) == 576

"""The scorers (both readings of FoPru's attention, CLS attention) and the uniform control, against independent
float64 references and hand-built inputs whose answer is obvious."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fopru_eval.core.config import PruningConfig, PruningConfigError, select_tokens
from fopru_eval.core.scoring import SCORERS
from fopru_eval.core.strategies import select_uniform


def reference_logits(q: np.ndarray, k: np.ndarray, scale: float) -> np.ndarray:
    """(heads, tokens, tokens) pre-softmax scaled logits, one head at a time, written out."""
    heads, tokens, _ = q.shape
    logits = np.zeros((heads, tokens, tokens))
    for h in range(heads):
        for i in range(tokens):
            for j in range(tokens):
                logits[h, i, j] = sum(q[h, i, d] * k[h, j, d] for d in range(q.shape[2])) * scale
    return logits


def reference_significance(maps: np.ndarray, prefix: int, mode: str) -> np.ndarray:
    """FoPru section 3.2 on (heads, tokens, tokens) maps: head mean, prefix dropped, column or row mean."""
    patches = maps.mean(axis=0)[prefix:, prefix:]
    column, row = patches.mean(axis=0), patches.mean(axis=1)
    if mode == "column":
        return column
    if mode == "row":
        return row
    return column if column.var() > row.var() else row


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def random_qk(images: int = 2, heads: int = 3, tokens: int = 10, dim: int = 4, seed: int = 0) -> tuple:
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(images, heads, tokens, dim, generator=generator, dtype=torch.float64)
    k = torch.randn(images, heads, tokens, dim, generator=generator, dtype=torch.float64)
    return q, k


@pytest.mark.parametrize("mode", ["auto", "column", "row"])
@pytest.mark.parametrize("reading", ["logits", "softmax"])
@pytest.mark.parametrize("prefix", [0, 1])
def test_fopru_scorers_match_the_reference_in_both_readings(mode: str, reading: str, prefix: int) -> None:
    q, k = random_qk()
    scorer = SCORERS.get(mode).reading(reading)
    ours = scorer.score(q, k, 0.5, prefix)
    for image in range(2):
        logits = reference_logits(q[image].numpy(), k[image].numpy(), 0.5)
        maps = logits if reading == "logits" else softmax(logits)
        expected = reference_significance(maps, prefix, mode)
        np.testing.assert_allclose(ours[image].numpy(), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("reading", ["logits", "softmax"])
def test_cls_attention_matches_the_reference(reading: str) -> None:
    q, k = random_qk(seed=1)
    ours = SCORERS.get("cls").reading(reading).score(q, k, 0.5, 1)
    for image in range(2):
        logits = reference_logits(q[image].numpy(), k[image].numpy(), 0.5)
        maps = logits if reading == "logits" else softmax(logits)
        np.testing.assert_allclose(ours[image].numpy(), maps[:, 0, 1:].mean(axis=0), rtol=1e-9, atol=1e-12)


def test_hand_built_logits_single_out_the_patch_everyone_attends_to() -> None:
    # 4 patches, one head: every query points along e0, and only patch 2's key does: column significance picks it.
    q = torch.zeros(1, 1, 4, 2)
    q[..., 0] = 1.0
    k = torch.zeros(1, 1, 4, 2)
    k[0, 0, 2, 0] = 3.0
    column = SCORERS.get("column").reading("logits").score(q, k, 1.0, 0)
    assert column.argmax().item() == 2
    # The row view is flat here (every query is the same), so auto takes the column view.
    assert torch.equal(SCORERS.get("auto").reading("logits").score(q, k, 1.0, 0), column)
    # CLS attention: token 0 is the CLS token, its query points along e1, and only patch 1 (token 2) answers.
    q_cls, k_cls = torch.zeros(1, 1, 4, 2), torch.zeros(1, 1, 4, 2)
    q_cls[0, 0, 0, 1], k_cls[0, 0, 2, 1] = 1.0, 2.0
    for reading in ("logits", "softmax"):
        assert SCORERS.get("cls").reading(reading).score(q_cls, k_cls, 1.0, 1).argmax().item() == 1


def test_cls_needs_a_cls_token() -> None:
    q, k = random_qk()
    with pytest.raises(ValueError, match="needs a CLS token"):
        SCORERS.get("cls").score(q, k, 0.5, 0)


class LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any operation produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        result = func(*args, **(kwargs or {}))
        for tensor in result if isinstance(result, tuple | list) else [result]:
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
        return result


@pytest.mark.parametrize("name", ["auto", "column", "row", "cls"])
def test_the_logits_path_never_builds_a_tokens_by_tokens_tensor(name: str) -> None:
    """A 128 x 128 = 16384-patch image (plus CLS): no operation makes anything near its 16385^2 map."""
    tokens, heads, dim = 16385, 2, 16
    q, k = (torch.randn(1, heads, tokens, dim, generator=torch.Generator().manual_seed(s)) for s in (0, 1))
    with LargestTensor() as watch:
        scores = SCORERS.get(name).reading("logits").score(q, k, dim**-0.5, 1)
    assert scores.shape == (1, tokens - 1)
    assert watch.largest <= heads * tokens * dim  # the queries themselves; a map would be 16385^2 = 268M elements


def test_the_softmax_path_holds_the_map_in_bounded_chunks() -> None:
    tokens, heads, dim = 4097, 2, 16
    q, k = (torch.randn(1, heads, tokens, dim, generator=torch.Generator().manual_seed(s)) for s in (0, 1))
    with LargestTensor() as watch:
        SCORERS.get("auto").reading("softmax").score(q, k, dim**-0.5, 1)
    assert watch.largest <= (1 << 20) + tokens  # one chunk of about a million scores, never the 16.8M-score map


@pytest.mark.parametrize(
    ("grid", "keep", "expected"),
    [
        ((4, 4), 4, [5, 7, 13, 15]),  # the centres of a 2 x 2 lattice of 2 x 2 cells: every other row and column
        ((24, 24), 144, None),  # 12 x 12: 2 x 2 downsampling
        ((24, 24), 64, None),
        ((3, 5), 4, None),
        ((1, 10), 3, [1, 5, 8]),
    ],
)
def test_uniform_spreads_the_budget_evenly(grid: tuple[int, int], keep: int, expected: list[int] | None) -> None:
    kept = select_uniform(grid, keep)
    assert kept.numel() == keep and kept.unique().numel() == keep and 0 <= kept.min() and kept.max() < grid[0] * grid[1]
    assert torch.equal(kept, kept.sort().values)
    if expected is not None:
        assert kept.tolist() == expected
    if grid == (24, 24) and keep == 144:
        rows, cols = np.divmod(kept.numpy(), 24)
        assert set(rows) == set(cols) == set(range(1, 24, 2))


def test_uniform_ignores_the_scores_and_keeps_the_budget() -> None:
    config = PruningConfig(strategy="uniform", keep_tokens=64)
    assert not config.needs_scores
    assert select_tokens(config, (24, 24), None, torch.Generator()).numel() == 64
    assert select_tokens(PruningConfig(strategy="uniform", keep_ratio=0.25), (24, 24)).numel() == 144


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"strategy": "rank", "keep_tokens": 64, "scores": "probabilities"}, "accepted values: logits, softmax"),
        ({"strategy": "rank", "keep_tokens": 64, "significance": "cls_token"}, "auto, column, row, cls"),
    ],
)
def test_bad_scorer_values_name_the_argument(args: dict, message: str) -> None:
    with pytest.raises(PruningConfigError, match=message):
        PruningConfig.from_model_args(args)

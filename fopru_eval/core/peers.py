"""The pruning methods FoPru is compared with, each one registered strategy: VisionZip, VisPruner, DivPrune, FastV.

Each rule is written from its paper and its authors' code (the sources and what differs from them are in the README's
"Peer methods" section). Everything runs on one view of one image at a time, so every method works at any batch size
and with the per-view budget of every family; the driver applies the budget, the reorder step and the merges.

  ``visionzip``  dominant tokens by the CLS token's attention, then contextual tokens: the rest merged into evenly
                 spaced targets by the cosine similarity of their keys (arXiv 2412.04467).
  ``vispruner``  important tokens by the CLS token's attention, then diverse tokens: near-duplicates among the rest
                 removed by cosine similarity of the tower's features, a few per round (arXiv 2412.01818).
  ``divprune``   the max-min diverse subset of the features the LLM receives, greedily, by cosine distance
                 (arXiv 2503.02175).
  ``fastv``      inside the LLM: after layer K, the tokens the last prompt token attends to most in layer K
                 (arXiv 2403.06764); the stage lives in ``fopru_eval/families/llm_stage.py``, the rule here.

Pure tensor code: nothing here knows a model or lmms-eval.
"""

from __future__ import annotations

import torch

from fopru_eval.core.budget import Budget
from fopru_eval.core.strategies import LLM_LAYER, Grid, Merge, Option, register_strategy, select_rank

# VisionZip's split of a budget at 64 tokens is 54 dominant + 10 contextual; the same share at every budget gives
# 108 + 20 at 128 and 162 + 30 at 192.
CONTEXTUAL_RATIO = Option("contextual_ratio", 10 / 64, float, 0.0, 1.0)
# VisPruner's default share of important tokens (its eval scripts' --important_ratio 0.5).
IMPORTANT_RATIO = Option("important_ratio", 0.5, float, 0.0, 1.0)
# VisPruner removes at most this many near-duplicates per round.
VISPRUNER_ROUND = 8


def unit_rows(vectors: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length, in float32 at least, so cosine similarity is a dot product."""
    vectors = vectors.float() if vectors.dtype in (torch.float16, torch.bfloat16) else vectors
    return vectors / vectors.norm(dim=-1, keepdim=True)


# ----- VisionZip ------------------------------------------------------------------------------------------------------


def contextual_merge(keys: torch.Tensor, rest: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """VisionZip's contextual tokens among the view's ``rest`` (indices, ascending): ``count`` targets at an even
    stride over ``rest``; every other token joins the target its key is most similar to (cosine); a target then carries
    itself plus the mean of the tokens that joined it. Returns the targets (indices into the view) and their (count,
    tokens) merge weights."""
    tokens = keys.shape[0]
    step = max(1, rest.numel() // count)
    target_slots = torch.arange(0, rest.numel(), step)[:count]
    is_target = torch.zeros(rest.numel(), dtype=torch.bool)
    is_target[target_slots] = True
    targets, joining = rest[is_target], rest[~is_target]
    unit = unit_rows(keys)
    choice = (unit[joining.to(keys.device)] @ unit[targets.to(keys.device)].T).argmax(dim=1).cpu()
    joined = torch.bincount(choice, minlength=targets.numel()).clamp(min=1)
    weights = torch.zeros(targets.numel(), tokens, dtype=torch.float64)
    weights[torch.arange(targets.numel()), targets] = 1.0
    weights[choice, joining] = 1.0 / joined[choice].double()
    return targets, weights


@register_strategy("visionzip", significance="cls", reads=("keys",), options=(CONTEXTUAL_RATIO,), merges=True)
def visionzip(
    scores: torch.Tensor, budget: Budget, grid: Grid, generator: torch.Generator, keys: torch.Tensor,
    contextual_ratio: float = CONTEXTUAL_RATIO.default,
) -> Merge:  # fmt: skip
    """VisionZip: ``round(budget * contextual_ratio)`` contextual tokens, the rest of the budget dominant."""
    tokens = grid[0] * grid[1]
    total = budget.tokens(tokens)
    contextual = round(total * contextual_ratio)
    dominant = select_rank(scores, total - contextual).cpu()
    weights = torch.zeros(dominant.numel(), tokens, dtype=torch.float64)
    weights[torch.arange(dominant.numel()), dominant] = 1.0  # a dominant token carries itself
    if contextual == 0:
        return Merge(dominant, weights)
    rest = torch.ones(tokens, dtype=torch.bool)
    rest[dominant] = False
    targets, merged = contextual_merge(keys, rest.nonzero().flatten(), contextual)
    return Merge(torch.cat([dominant, targets]), torch.cat([weights, merged]))


# ----- VisPruner ------------------------------------------------------------------------------------------------------


def remove_duplicates(features: torch.Tensor, candidates: torch.Tensor, count: int) -> torch.Tensor:
    """VisPruner's diverse tokens: ``count`` of ``candidates`` (indices into ``features``, in the order given).

    Each round splits the candidates alternately into A (even places) and B (odd places) and removes the (up to
    ``VISPRUNER_ROUND``) tokens of A most similar to any token of B; the survivors of A (by descending similarity, as
    the authors order them), then B, are the next round's candidates, until ``count`` remain."""
    unit = unit_rows(features)
    while count > 0:
        remove = min(VISPRUNER_ROUND, candidates.numel() - count)
        if remove <= 0:
            break
        evens, odds = candidates[::2], candidates[1::2]
        similarity = (unit[evens.to(unit.device)] @ unit[odds.to(unit.device)].T).max(dim=1).values.cpu()
        distinct = torch.sort(similarity, descending=True, stable=True).indices[remove:]
        candidates = torch.cat([evens[distinct], odds])
    return candidates[:count] if count > 0 else candidates[:0]


@register_strategy("vispruner", significance="cls", reads=("tower_features",), options=(IMPORTANT_RATIO,))
def vispruner(
    scores: torch.Tensor, budget: Budget, grid: Grid, generator: torch.Generator, tower_features: torch.Tensor,
    important_ratio: float = IMPORTANT_RATIO.default,
) -> torch.Tensor:  # fmt: skip
    """VisPruner: ``int(budget * important_ratio)`` important tokens by CLS attention, the rest of the budget diverse
    tokens among the others (taken in descending CLS attention, as the authors order them)."""
    total = budget.tokens(grid[0] * grid[1])
    important = int(total * important_ratio)
    by_attention = torch.sort(scores.cpu(), descending=True, stable=True).indices
    diverse = remove_duplicates(tower_features, by_attention[important:], total - important)
    return torch.cat([by_attention[:important], diverse])


# ----- DivPrune -------------------------------------------------------------------------------------------------------


def max_min_diverse(features: torch.Tensor, count: int) -> torch.Tensor:
    """DivPrune's greedy max-min subset of ``count`` tokens by cosine distance (1 - cosine similarity): first the
    token whose nearest other token is farthest, then each time the token farthest from everything chosen so far."""
    unit = unit_rows(features)
    distance = 1.0 - unit @ unit.T
    # The nearest other token: the second smallest of each column, the smallest being the token itself.
    nearest = torch.topk(distance, 2, dim=0, largest=False).values[1]
    chosen = [int(nearest.argmax())]
    farthest = distance[chosen[0]].clone()
    for _ in range(count - 1):
        farthest[chosen] = -torch.inf  # a chosen token is never chosen again, even among exact duplicates
        chosen.append(int(farthest.argmax()))
        farthest = torch.minimum(farthest, distance[chosen[-1]])
    return torch.tensor(chosen, dtype=torch.long)


@register_strategy("divprune", needs_scores=False, reads=("features",))
def divprune(
    scores: None, budget: Budget, grid: Grid, generator: torch.Generator, features: torch.Tensor
) -> torch.Tensor:
    return max_min_diverse(features, budget.tokens(grid[0] * grid[1]))


# ----- FastV ----------------------------------------------------------------------------------------------------------


@register_strategy("fastv", stage="llm", options=(LLM_LAYER,), positions=("original",))
def fastv(scores: torch.Tensor, budget: Budget, grid: Grid, generator: torch.Generator) -> torch.Tensor:
    """FastV: the budget's tokens the last prompt token attends to most in LLM layer ``llm_layer`` - 1 (averaged
    over heads), the rest dropped from layer ``llm_layer`` on; they keep their position ids, as in FastV."""
    return select_rank(scores, budget.tokens(grid[0] * grid[1]))

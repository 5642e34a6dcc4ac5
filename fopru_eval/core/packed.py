"""Token significance for vision towers that pack a batch's images into one sequence (Qwen2-VL, Qwen2.5-VL).

Such a tower has no CLS token, runs every image's patches as one sequence split by ``cu_seqlens`` (attention never
crosses images in a full-attention block), rotates queries and keys with a 2-D rotary embedding, and its merger
turns each 2 x 2 group of neighbouring patches (consecutive in the sequence) into one LLM token. From one block's
fused qkv projection, this module scores each image on its own and pools the scores to one per LLM token.

With no CLS token, every softmax row sums to 1 over the patches alone, so FoPru's row significance (the attention a
token gives, mean_j A[i, j]) is exactly 1 / N for every token and carries no information: ``auto`` picks the column
significance unless that is flat too, and ``row`` ranks a uniform vector, so rank and row fall back to raster order.

Everything here is pure tensor code: it knows nothing about any model or about lmms-eval.
"""

from __future__ import annotations

import torch

from fopru_eval.core.scoring import ScoreFunction


def rotate_queries_and_keys(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries and keys, each (tokens, num_heads, head_dim), as the block attends with them.

    qkv: (tokens, 3 * num_heads * head_dim), the fused projection's output; cos, sin: (tokens, head_dim), the block's
    rotary embedding. The rotation runs in float32 and the result returns to the model's dtype, as in the Qwen-VL
    vision attention (``apply_rotary_pos_emb_vision``).
    """
    tokens = qkv.shape[0]
    queries, keys, _ = qkv.reshape(tokens, 3, num_heads, -1).unbind(1)
    cos, sin = cos.unsqueeze(-2).float(), sin.unsqueeze(-2).float()

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.float().chunk(2, dim=-1)
        return (x.float() * cos + torch.cat((-x2, x1), dim=-1) * sin).to(x.dtype)

    return rotate(queries), rotate(keys)


def pool_merge_groups(significance: torch.Tensor, merge_unit: int) -> torch.Tensor:
    """One score per LLM token: the mean significance of the ``merge_unit`` (2 x 2 = 4) patches the merger joins.

    The tower orders patches block by block, so each merge group is ``merge_unit`` consecutive entries.
    """
    if significance.numel() % merge_unit:
        raise ValueError(f"{significance.numel()} patches do not split into merge groups of {merge_unit}")
    return significance.reshape(-1, merge_unit).mean(dim=-1)


def packed_image_significance(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    cu_seqlens: torch.Tensor,
    num_heads: int,
    scale: float,
    score: ScoreFunction,
    merge_unit: int,
) -> list[torch.Tensor]:
    """Significance per LLM token of every image in a packed sequence, in the sequence's order.

    Each image (segment ``cu_seqlens[i]:cu_seqlens[i + 1]``) gets its own attention map, as in the block itself, scored
    by ``score`` (a scorer's function) with no prefix tokens, then pooled per merge group.
    """
    queries, keys = rotate_queries_and_keys(qkv, cos, sin, num_heads)
    bounds = cu_seqlens.tolist()
    return [
        pool_merge_groups(score(_one_image(queries[a:b]), _one_image(keys[a:b]), scale, 0)[0], merge_unit)
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def _one_image(tokens_heads_dim: torch.Tensor) -> torch.Tensor:
    """(tokens, heads, head_dim) -> the scorers' (1, heads, tokens, head_dim)."""
    return tokens_heads_dim.transpose(0, 1).unsqueeze(0)


def undo_window_order(per_image: list[torch.Tensor], window_index: torch.Tensor) -> list[torch.Tensor]:
    """Per-image LLM-token scores back in raster order, for a tower that reorders merge groups into windows.

    Qwen2.5-VL permutes the merge groups of every image by ``window_index`` (global over the batch, each image's
    groups staying within the image) before its blocks run, and undoes it after the merger with
    ``argsort(window_index)``; scores computed inside the blocks need the same reversal.
    """
    sizes = [scores.numel() for scores in per_image]
    reverse = torch.argsort(window_index).to(per_image[0].device)
    return list(torch.cat(per_image)[reverse].split(sizes))

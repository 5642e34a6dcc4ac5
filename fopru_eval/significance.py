"""Token significance from one vision layer's attention (FoPru, arXiv 2411.14164, section 3.2).

Everything here is pure tensor code: it knows nothing about any model or about lmms-eval.
"""

from __future__ import annotations

import torch


def head_averaged_attention(queries: torch.Tensor, keys: torch.Tensor, num_heads: int, scale: float) -> torch.Tensor:
    """softmax(Q K^T * scale) averaged over heads.

    queries, keys: (batch, tokens, num_heads * head_dim), the outputs of a layer's q/k projections.
    Returns (batch, tokens, tokens) in float32; the softmax runs in float32 so bf16 models rank tokens stably.
    """
    batch, tokens, width = queries.shape
    head_dim = width // num_heads
    # Scaling the (tokens x width) queries is cheaper than scaling the (heads x tokens x tokens) scores, and the
    # softmax upcasts as it reads, so no float32 copy of the scores is made first.
    q = (queries * scale).reshape(batch, tokens, num_heads, head_dim).transpose(1, 2)
    k = keys.reshape(batch, tokens, num_heads, head_dim).transpose(1, 2)
    return torch.matmul(q, k.transpose(-1, -2)).softmax(dim=-1, dtype=torch.float32).mean(dim=1)


def patch_significance(attention: torch.Tensor, num_prefix_tokens: int, mode: str = "auto") -> torch.Tensor:
    """Significance of each patch token from a head-averaged attention map.

    attention: (batch, tokens, tokens). The first ``num_prefix_tokens`` rows and columns (a CLS token) are dropped,
    leaving the patch-to-patch matrix A. Then, per image:
      column significance s_col[j] = mean_i A[i, j]   (attention a token receives)
      row significance    s_row[i] = mean_j A[i, j]   (attention a token gives)
    ``auto`` uses whichever of the two has the larger variance; a tie picks the row significance.
    Returns (batch, patches) in float32.
    """
    patches = attention[:, num_prefix_tokens:, num_prefix_tokens:].float()
    return choose_significance(column=patches.mean(dim=1), row=patches.mean(dim=2), mode=mode)


def choose_significance(column: torch.Tensor, row: torch.Tensor, mode: str) -> torch.Tensor:
    """The column or the row significance (..., tokens) as ``mode`` says; ``auto`` takes, per image, the one with
    the larger variance, and a tie picks the row significance."""
    if mode == "column":
        return column
    if mode == "row":
        return row
    if mode != "auto":
        raise ValueError(f"significance={mode!r} is not supported; accepted values: auto, column, row")
    use_column = column.var(dim=-1, keepdim=True) > row.var(dim=-1, keepdim=True)
    return torch.where(use_column, column, row)

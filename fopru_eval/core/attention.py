"""Token significance from one vision layer's attention (FoPru, arXiv 2411.14164, section 3.2).

"Attention map" has two readings, and both are here: the softmax probabilities (``fopru_significance``, reduced chunk
by chunk, never a whole map) and the pre-softmax scaled logits Q K^T / sqrt(d) (``logit_significance``, which only
needs the mean query and the mean key). The paper's abstract does not say which it means; the only public
implementation found (the FoPru pruner in HydraInfer) reads the logits. Also here: the CLS token's attention to each
patch (``cls_attention``), the baseline score of VisionZip and PruMerge.

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


def chunk_elements(device: torch.device) -> int:
    """How many attention scores one step of ``attention_sums`` holds at once.

    On the CPU, chunks of about a million scores (4 MiB in float32) stay in cache: measured on 2 cores, 1024 tokens x
    16 heads, they reduce 2.5-3x faster than 64-million-score chunks. On a GPU, larger chunks keep the number of
    kernel launches small; 2^26 scores (256 MiB in float32) bounds the memory even for 16384-patch images.
    """
    return 1 << 20 if device.type == "cpu" else 1 << 26


def attention_sums(
    queries: torch.Tensor,
    keys: torch.Tensor,
    scale: float,
    num_prefix_tokens: int = 0,
    max_chunk_elements: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Column and row sums of every map softmax(Q K^T), reduced chunk by chunk so no whole map is ever held.

    queries, keys: (maps, tokens, head_dim); a "map" is one head of one image, A = softmax(Q K^T * scale). With the
    first ``num_prefix_tokens`` rows and columns dropped (a CLS token) after the softmax, returns, both (maps,
    patches) in float32 (float64 for float64 inputs):
      received[m, j] = sum_i A_m[i, j]   (the column sums: attention patch j receives from the patches)
      given[m, i]    = sum_j A_m[i, j]   (the row sums: attention patch i gives to the patches)
    Scores and softmax are at least float32 whatever the model's dtype: a bf16 matmul would round every score to 8
    bits of mantissa before the softmax, which the model's own fused attention does not do. (On a float32 model the
    upcast is free; on a GPU the float32 matmul is a small part of one layer.)
    """
    maps, tokens, _ = queries.shape
    budget = max_chunk_elements or chunk_elements(queries.device)
    rows = min(tokens, max(1, budget // tokens))
    maps_per_step = max(1, budget // (rows * tokens)) if rows == tokens else 1
    dtype = torch.promote_types(queries.dtype, torch.float32)
    # Scaling the (tokens x head_dim) queries is cheaper than scaling the (tokens x tokens) scores.
    queries, keys_t = queries.to(dtype) * scale, keys.to(dtype).transpose(1, 2)
    received = torch.zeros(maps, tokens, dtype=dtype, device=queries.device)
    given = torch.zeros(maps, tokens, dtype=dtype, device=queries.device)
    for first_map in range(0, maps, maps_per_step):
        step = slice(first_map, first_map + maps_per_step)
        for start in range(0, tokens, rows):
            block = slice(start, start + rows)
            attention = torch.matmul(queries[step, block], keys_t[step]).softmax(dim=-1)
            # Each softmax row sums to 1, so what a row gives the patches is 1 minus what it gives the prefix tokens:
            # no second pass over the chunk.
            given[step, block] = 1 - attention[..., :num_prefix_tokens].sum(dim=-1)
            patch_rows = max(0, num_prefix_tokens - start)  # prefix query rows give no column significance
            received[step] += attention[:, patch_rows:].sum(dim=1)
    return received[:, num_prefix_tokens:], given[:, num_prefix_tokens:]


def streamed_patch_significance(
    queries: torch.Tensor,
    keys: torch.Tensor,
    num_heads: int,
    scale: float,
    num_prefix_tokens: int,
    mode: str = "auto",
    max_chunk_elements: int | None = None,
) -> torch.Tensor:
    """``patch_significance(head_averaged_attention(...))`` without the (batch, heads, tokens, tokens) map.

    queries, keys: (batch, tokens, num_heads * head_dim), the outputs of a layer's q/k projections. Returns
    (batch, patches) in float32 (float64 for float64 inputs).
    """
    q, k = split_heads(queries, num_heads), split_heads(keys, num_heads)
    return fopru_significance(q, k, scale, num_prefix_tokens, mode, max_chunk_elements)


def split_heads(projection: torch.Tensor, num_heads: int) -> torch.Tensor:
    """A q or k projection's (batch, tokens, num_heads * head_dim) output as (batch, num_heads, tokens, head_dim)."""
    batch, tokens, width = projection.shape
    return projection.reshape(batch, tokens, num_heads, width // num_heads).transpose(1, 2)


def fopru_significance(
    queries: torch.Tensor,
    keys: torch.Tensor,
    scale: float,
    num_prefix_tokens: int,
    mode: str = "auto",
    max_chunk_elements: int | None = None,
) -> torch.Tensor:
    """FoPru's significance of every patch, from the queries and keys of one attention layer, in bounded memory.

    queries, keys: (images, heads, tokens, head_dim). The first ``num_prefix_tokens`` tokens (a CLS token) are dropped
    after the softmax. Returns (images, patches) in float32 (float64 for float64 inputs).
    """
    images, heads, tokens, head_dim = queries.shape
    # One map per (image, head).
    received, given = attention_sums(
        queries.reshape(-1, tokens, head_dim),
        keys.reshape(-1, tokens, head_dim),
        scale,
        num_prefix_tokens,
        max_chunk_elements,
    )
    patches = tokens - num_prefix_tokens
    # The mean over heads and over the patch rows (columns) of the patch-to-patch matrix.
    column = received.reshape(images, heads, patches).sum(dim=1) / (heads * patches)
    row = given.reshape(images, heads, patches).sum(dim=1) / (heads * patches)
    return choose_significance(column=column, row=row, mode=mode)


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


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def logit_significance(
    queries: torch.Tensor, keys: torch.Tensor, scale: float, num_prefix_tokens: int, mode: str = "auto"
) -> torch.Tensor:
    """FoPru's significance read from the pre-softmax scaled logits L = Q K^T * scale, in O(tokens x head_dim).

    queries, keys: (images, heads, tokens, head_dim). With the prefix rows and columns dropped, the patch-to-patch
    logits averaged over heads give
      column significance s_col[j] = mean_i L[i, j] = scale * mean_i(q_i) . k_j   (per head, then the head mean)
      row significance    s_row[i] = mean_j L[i, j] = scale * q_i . mean_j(k_j)
    so only the mean query and the mean key are formed, never a (tokens x tokens) map. ``mode`` chooses as for the
    softmax reading. Returns (images, patches) in at least float32.
    """
    q = _at_least_float32(queries[:, :, num_prefix_tokens:])
    k = _at_least_float32(keys[:, :, num_prefix_tokens:])
    column = (q.mean(dim=2, keepdim=True) @ k.transpose(-1, -2)).squeeze(2).mean(dim=1) * scale
    row = (q @ k.mean(dim=2).unsqueeze(-1)).squeeze(-1).mean(dim=1) * scale
    return choose_significance(column=column, row=row, mode=mode)


def cls_attention(
    queries: torch.Tensor, keys: torch.Tensor, scale: float, num_prefix_tokens: int, reading: str = "softmax"
) -> torch.Tensor:
    """The attention the CLS token (the first prefix token) pays each patch, averaged over heads: the score of
    VisionZip's dominant tokens and of PruMerge. ``reading`` is ``softmax`` (the probabilities of the CLS row, over
    every token as in the layer) or ``logits`` (its scaled logits). Returns (images, patches) in at least float32."""
    if num_prefix_tokens < 1:
        raise ValueError("significance=cls needs a CLS token, and this tower has no prefix token")
    cls_row = (_at_least_float32(queries[:, :, :1]) @ _at_least_float32(keys).transpose(-1, -2)).squeeze(2) * scale
    if reading == "softmax":
        cls_row = cls_row.softmax(dim=-1)
    return cls_row[..., num_prefix_tokens:].mean(dim=1)

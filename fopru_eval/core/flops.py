"""Estimated prefill FLOPs from a model's dimensions: what the vision tower, the projector and the LLM compute for one
sample, the LLM over the tokens actually fed (after pruning).

Counted: every matrix multiply, at 2 FLOPs per multiply-add: the attention projections, the attention itself (QK^T and
attention x V, over the (query, key) pairs that are computed), the MLP, the patch embedding, the projector, and the LM
head over the last position only (prefill samples from it). Left out: norms, activations, softmax, rotary embeddings
and residual adds, each linear in the tokens and a few percent at most of the total at 7B scale. The families
(``fopru_eval/families/``) say which dimensions apply; the tower always runs over every patch, since pruning happens
after it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Blocks:
    """A stack of identical transformer blocks."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    gated: bool  # a gated (SwiGLU) MLP has three matrices, a plain one two

    def flops(self, tokens: int, attended_pairs: int, layers: int | None = None) -> int:
        """``layers`` (default all) blocks over ``tokens`` tokens, in which ``attended_pairs`` (query, key) pairs per
        head are computed: n * n for full attention, n (n + 1) / 2 for causal."""
        query_width, kv_width = self.heads * self.head_dim, self.kv_heads * self.head_dim
        projections = linear(tokens, self.hidden, 2 * query_width + 2 * kv_width)  # q, k, v and o
        attention = 2 * 2 * attended_pairs * query_width  # QK^T and attention x V
        mlp = linear(tokens, self.hidden, self.intermediate) * (3 if self.gated else 2)
        return (self.layers if layers is None else layers) * (projections + attention + mlp)


def linear(tokens: int, fan_in: int, fan_out: int) -> int:
    return 2 * tokens * fan_in * fan_out


def causal_pairs(tokens: int) -> int:
    return tokens * (tokens + 1) // 2


def window_pairs(rows: int, cols: int, window: int) -> int:
    """(query, key) pairs of attention within ``window`` x ``window`` tiles of a rows x cols grid (edge tiles smaller):
    the sum over tiles of their size squared, which factors into rows and columns."""

    def squares(length: int) -> int:
        full, rest = divmod(length, window)
        return full * window * window + rest * rest

    return squares(rows) * squares(cols)


def llm_prefill_flops(blocks: Blocks, vocab_size: int, tokens: int, shortened: tuple[int, int] | None = None) -> int:
    """A decoder-only LLM's prefill over ``tokens`` tokens: causal blocks, then the LM head at the last position.
    ``shortened=(layer, tokens_after)``: the blocks from ``layer`` on run over ``tokens_after`` tokens only (tokens
    dropped inside the LLM, FastV's stage); the first ``layer`` blocks over all of them."""
    head = linear(1, blocks.hidden, vocab_size)
    if shortened is None:
        return blocks.flops(tokens, causal_pairs(tokens)) + head
    layer, after = shortened
    first = blocks.flops(tokens, causal_pairs(tokens), layers=layer)
    return first + blocks.flops(after, causal_pairs(after), layers=blocks.layers - layer) + head

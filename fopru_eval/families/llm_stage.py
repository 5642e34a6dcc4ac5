"""The in-LLM stage: visual tokens dropped after one LLM layer, chosen by the attention inside the LLM (FastV's stage).

    layer K - 1  hooks read its queries and keys (the q/k projections, or the q/k norms where the layer has them)
                 and compute one attention row from them: the last token's, softmax over the row, averaged over heads.
                 The layer itself keeps running with SDPA or flash attention; no map is materialised.
    layer K      a pre-hook selects each view's tokens by that row (the config's strategy and per-view budget, the
                 layout's marker rule, as before the LLM), gathers the kept tokens' hidden states, rotary embeddings
                 and position ids (kept tokens keep their positions, as in FastV), and hands layers K.. a causal mask
                 of the shorter sequence, built by transformers' own ``create_causal_mask`` for layer K's cache. Rows
                 that keep different numbers of tokens are left-padded again, so any batch size works.
    decoding     layers below K cache every token, layers from K on only the kept ones: each new token's mask for
                 those layers covers the kept prompt tokens and the tokens generated so far. A forward without a
                 cache (``use_cache=False``) is a full pass each step, and selects again from its own last token.

Only the modules named are hooked, and only while the stage is entered; the model is never patched. The one
architecture fact relied on: every LLM here rotates queries and keys as ``x * cos + rotate_half(x) * sin`` with the
``position_embeddings`` its layers receive (Qwen's mRoPE folds its sections into cos and sin). The tests hold the row
to each family's eager attention map. A sliding-window LLM is run only while the sequence fits its window, where its
mask is the full causal one (``_check_window``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.masking_utils import create_causal_mask

from fopru_eval.core.layout import ImageLayout


@dataclass(frozen=True)
class VisualSpan:
    """One image's (or video's) packed tokens in one row of the batch: where they sit, and how to select them."""

    layout: ImageLayout
    # Index in the padded row of each packed token, in packed order.
    positions: torch.Tensor
    # The doc key and image index that seed its random draws (as before the LLM).
    doc_key: str
    image_index: int


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The standard rotary embedding: ``x * cos + rotate_half(x) * sin`` (x: (..., head_dim))."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


def last_token_attention(
    queries: torch.Tensor,
    keys: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    valid: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """(batch, tokens): the attention the last token pays every token, averaged over heads, in float32.

    queries (batch, tokens, heads, head_dim) and keys (batch, tokens, kv_heads, head_dim) before the rotary embedding;
    cos and sin (batch or 1, tokens, head_dim); valid (batch, tokens) False for padding.
    """
    query = rotate(queries[:, -1].float(), cos[:, -1:].float(), sin[:, -1:].float())  # (batch, heads, head_dim)
    keys = rotate(keys.float(), cos.unsqueeze(2).float(), sin.unsqueeze(2).float())  # (batch, tokens, kv_heads, dim)
    keys = keys.repeat_interleave(query.shape[1] // keys.shape[2], dim=2)
    logits = torch.einsum("bhd,bthd->bht", query, keys) * scale
    logits = logits.masked_fill(~valid.to(logits.device).unsqueeze(1), float("-inf"))
    return logits.softmax(dim=-1).mean(dim=1)


def gather_tokens(tensor: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """``tensor`` at the (batch, kept) ``index`` along ``dim``; the batch is dimension ``dim - 1`` (expanded if 1)."""
    batch_dim = dim - 1
    shape = list(tensor.shape)
    shape[batch_dim] = index.shape[0]
    tensor = tensor.expand(*shape)
    view = [1] * tensor.dim()
    view[batch_dim], view[dim] = index.shape
    index = index.to(tensor.device).view(view).expand(*shape[:dim], index.shape[1], *shape[dim + 1 :])
    return tensor.gather(dim, index)


class LLMStage:
    """While entered, the LLM drops each row's unselected visual tokens from layer ``depth`` (K) on; the family has
    checked K (``Family.check_pruning``).

    ``spans`` per row: its images' and videos' packed tokens; ``attention_mask`` the batch's (batch, tokens) padding
    mask; ``keep(span, scores)``: the packed positions of a span that survive, given each packed token's score, and
    how many of them are markers (the driver's selection: strategy, per-view budget, marker rule). After the
    prefill, ``visual_tokens_kept``, ``markers_kept`` and ``tokens_after`` (each row's length from layer K on) say what
    the later layers saw.
    """

    def __init__(
        self,
        layers: nn.ModuleList,
        depth: int,
        spans: list[list[VisualSpan]],
        attention_mask: torch.Tensor,
        keep: Callable[[VisualSpan, torch.Tensor], tuple[torch.Tensor, int]],
    ) -> None:
        self.layers, self.depth, self.spans, self.keep = layers, depth, spans, keep
        self.attention_mask = attention_mask.bool()
        self.visual_tokens_kept: list[int] = [0] * len(spans)
        self.markers_kept: list[int] = [0] * len(spans)
        self.tokens_after: list[int] = [int(row.sum()) for row in self.attention_mask]
        # Called once a full pass has selected (the driver fills in each sample's counts).
        self.on_selected: Callable[[], None] = lambda: None
        # The last full pass's attention row (batch, tokens), kept for inspection.
        self.attention_row: torch.Tensor | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._reset()

    def _reset(self) -> None:
        self._rotary: tuple[torch.Tensor, torch.Tensor] | None = None
        self._queries: torch.Tensor | None = None
        self._row: torch.Tensor | None = None
        self._kept: dict[str, Any] | None = None  # the shortened sequence layers K.. see
        self._full_pass = False
        self._layer_mask: Any = None

    def __enter__(self) -> LLMStage:
        attention = self.layers[self.depth - 1].self_attn
        self._scoring = attention
        query_module = getattr(attention, "q_norm", None) or attention.q_proj
        key_module = getattr(attention, "k_norm", None) or attention.k_proj
        self._handles = [
            attention.register_forward_pre_hook(self._keep_rotary, with_kwargs=True),
            query_module.register_forward_hook(self._keep_queries),
            key_module.register_forward_hook(self._score),
        ]
        self._handles += [
            layer.register_forward_pre_hook(self._shorten, with_kwargs=True) for layer in self.layers[self.depth :]
        ]
        self._reset()
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._reset()

    # ----- layer K - 1: the attention row -------------------------------------------------------------------------

    def _keep_rotary(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        self._rotary = kwargs.get("position_embeddings")
        if self._rotary is None:
            raise RuntimeError(
                f"{type(module).__name__} was called without position_embeddings; cannot rebuild its row"
            )

    def _keep_queries(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self._queries = output

    def _score(self, module: nn.Module, args: tuple, keys: torch.Tensor) -> None:
        queries, self._queries = self._queries, None
        if keys.shape[1] == 1:  # a decoding step: the selection was made at the prefill
            return
        head_dim = self._scoring.head_dim
        batch, tokens = keys.shape[:2]
        cos, sin = self._rotary
        self._row = self.attention_row = last_token_attention(
            queries.reshape(batch, tokens, -1, head_dim),
            keys.reshape(batch, tokens, -1, head_dim),
            cos,
            sin,
            self._valid(tokens),
            self._scoring.scaling,
        )

    def _valid(self, tokens: int) -> torch.Tensor:
        """The padding mask of a full pass over ``tokens`` tokens: the prompt's, then every generated token."""
        extra = tokens - self.attention_mask.shape[1]
        return torch.cat([self.attention_mask, self.attention_mask.new_ones(self.attention_mask.shape[0], extra)], 1)

    # ----- layers K..: the shorter sequence -----------------------------------------------------------------------

    def _shorten(self, layer: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        hidden = args[0] if args else kwargs["hidden_states"]
        if layer is self.layers[self.depth]:
            # A prefill (or a full pass without a cache) selects; a decoding step reuses the prefill's selection.
            self._full_pass = hidden.shape[1] > 1
            if self._full_pass:
                hidden = self._drop(hidden, kwargs)
            elif self._kept is None:
                raise RuntimeError("a decoding step reached the pruned layers before any prefill selected tokens")
            self._layer_mask = self._mask(hidden, kwargs.get("cache", kwargs.get("past_key_values")))
        replaced = {"attention_mask": self._layer_mask}
        if self._full_pass:  # a decoding step's rotary embedding and position ids are its own, as given
            replaced |= {name: value for name, value in self._kept.items() if name != "valid"}
        if args:
            return (hidden, *args[1:]), kwargs | replaced
        return args, kwargs | replaced | {"hidden_states": hidden}

    def _drop(self, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        if self._row is None:
            raise RuntimeError(f"layer {self.depth - 1}'s attention row was not computed; cannot select tokens")
        row, self._row = self._row, None
        valid = self._valid(hidden.shape[1]).cpu()
        kept_rows = [self._keep_row(i, row[i]) for i in range(hidden.shape[0])]
        length = max(kept.numel() for kept in kept_rows)
        # Rows that keep fewer tokens are left-padded again (repeating their first position, masked out).
        index = torch.stack([torch.cat([kept[:1].expand(length - kept.numel()), kept]) for kept in kept_rows])
        padding = torch.stack([torch.arange(length) < length - kept.numel() for kept in kept_rows])
        kept_valid = valid.gather(1, index) & ~padding
        self.tokens_after = [int(v.sum()) for v in kept_valid]
        self.on_selected()
        cos, sin = kwargs["position_embeddings"]
        self._kept = {
            "valid": kept_valid,
            "position_embeddings": (gather_tokens(cos, index, 1), gather_tokens(sin, index, 1)),
        }
        position_ids = kwargs.get("position_ids")
        if isinstance(position_ids, torch.Tensor):
            self._kept["position_ids"] = gather_tokens(position_ids, index, position_ids.dim() - 1)
        return gather_tokens(hidden, index, 1)

    def _keep_row(self, i: int, row: torch.Tensor) -> torch.Tensor:
        """The positions row ``i`` keeps: every token but its unselected visual tokens (pads stay, masked)."""
        keep = torch.ones(row.numel(), dtype=torch.bool)
        visual = kept_markers = 0
        for span in self.spans[i]:
            kept, markers = self.keep(span, row[span.positions.to(row.device)])
            keep[span.positions] = False
            keep[span.positions[kept]] = True
            visual, kept_markers = visual + kept.numel() - markers, kept_markers + markers
        self.visual_tokens_kept[i], self.markers_kept[i] = visual, kept_markers
        return keep.nonzero().flatten()

    def _mask(self, hidden: torch.Tensor, cache: Any) -> Any:
        """Layer K's causal mask over the kept prompt tokens and, when decoding, the tokens generated since."""
        valid = self._kept["valid"].to(hidden.device)
        seen = cache.get_seq_length(self.depth) if cache is not None and hidden.shape[1] == 1 else 0
        generated = seen + hidden.shape[1] - valid.shape[1]
        config = self.layers[self.depth].self_attn.config
        self._check_window(config, self.attention_mask.shape[1] + max(generated, 0))
        if generated > 0:
            valid = torch.cat([valid, valid.new_ones(valid.shape[0], generated)], dim=1)
        return create_causal_mask(config, hidden, valid, cache, None, layer_idx=self.depth)

    @staticmethod
    def _check_window(config: Any, length: int) -> None:
        """A sliding-window LLM (Mistral's ``sliding_window``, Qwen2's ``use_sliding_window``) masks exactly as a full
        causal one while the sequence fits in the window; past it, the window of a shortened sequence would no longer
        cover the tokens it covers in the model, so the run stops rather than answer differently."""
        window = getattr(config, "sliding_window", None)
        if window is not None and getattr(config, "use_sliding_window", True) and length > window:
            raise RuntimeError(
                f"the LLM attends within a sliding window of {window} tokens and this sequence has {length}: tokens "
                "dropped inside the LLM (FastV) are supported on such an LLM only while the sequence fits the window"
            )

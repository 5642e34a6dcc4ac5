"""Cheap capture of one vision layer's attention, reduced at once to per-token significance.

``output_attentions=True`` would force eager attention in every layer and keep every layer's maps. Instead we hook
only the query and key projections of the one layer we need, recompute softmax(QK^T) there, and keep the
(images, patches) significance. The encoder itself keeps running with SDPA or flash attention, untouched.
"""

from __future__ import annotations

import torch
from torch import nn

from fopru_eval.significance import streamed_patch_significance


class SignificanceCapture:
    """Context manager: while active, each forward through ``query_proj``/``key_proj`` adds a batch of significance.

    The layer computes its queries before its keys, so the key hook finds the queries already stored.
    """

    def __init__(
        self,
        query_proj: nn.Module,
        key_proj: nn.Module,
        num_heads: int,
        scale: float,
        num_prefix_tokens: int,
        mode: str,
    ) -> None:
        self.query_proj = query_proj
        self.key_proj = key_proj
        self.num_heads = num_heads
        self.scale = scale
        self.num_prefix_tokens = num_prefix_tokens
        self.mode = mode
        self._queries: torch.Tensor | None = None
        self._batches: list[torch.Tensor] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> SignificanceCapture:
        self._batches.clear()
        self._handles = [
            self.query_proj.register_forward_hook(self._keep_queries),
            self.key_proj.register_forward_hook(self._reduce),
        ]
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._queries = None

    def _keep_queries(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self._queries = output

    def _reduce(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if self._queries is None:
            raise RuntimeError("the key projection ran before the query projection; cannot rebuild the attention map")
        self._batches.append(
            streamed_patch_significance(
                self._queries, output, self.num_heads, self.scale, self.num_prefix_tokens, self.mode
            )
        )
        self._queries = None

    @property
    def significance(self) -> torch.Tensor:
        """(images, patches) significance of every image seen while active, in the order they ran."""
        if not self._batches:
            raise RuntimeError("no attention was captured: the hooked layer did not run")
        return torch.cat(self._batches, dim=0)

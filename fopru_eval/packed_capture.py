"""Cheap capture of one packed vision block's attention (Qwen2-VL, Qwen2.5-VL), reduced at once to significance.

Two hooks on the chosen block, nothing else: a pre-hook on its attention module keeps the ``cu_seqlens`` and rotary
``position_embeddings`` the block is called with, and a hook on its fused ``qkv`` projection rebuilds each image's
softmax(QK^T) from that output and reduces it to per-token significance (``packed_significance.py``). The tower keeps
running with SDPA or flash attention in every block, untouched; no attention map is ever returned by the model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fopru_eval.packed_significance import packed_image_significance


class PackedSignificanceCapture:
    """Context manager: while active, each forward through ``attention`` adds one significance vector per image.

    ``attention`` is a vision block's attention module with a fused ``qkv`` projection, called with keyword arguments
    ``cu_seqlens`` and ``position_embeddings=(cos, sin)``, as in Qwen2-VL and Qwen2.5-VL.
    """

    def __init__(self, attention: nn.Module, num_heads: int, scale: float, mode: str, merge_unit: int) -> None:
        self.attention = attention
        self.num_heads = num_heads
        self.scale = scale
        self.mode = mode
        self.merge_unit = merge_unit
        self._call: dict[str, Any] | None = None
        self._images: list[torch.Tensor] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> PackedSignificanceCapture:
        self._images.clear()
        self._handles = [
            self.attention.register_forward_pre_hook(self._keep_call, with_kwargs=True),
            self.attention.qkv.register_forward_hook(self._reduce),
        ]
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._call = None

    def _keep_call(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if "cu_seqlens" not in kwargs or kwargs.get("position_embeddings") is None:
            raise RuntimeError(
                f"{type(module).__name__} was called without cu_seqlens/position_embeddings keywords; "
                "cannot rebuild its per-image attention"
            )
        self._call = kwargs

    def _reduce(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if self._call is None:
            raise RuntimeError("the qkv projection ran outside its attention module; cannot rebuild the attention map")
        cos, sin = self._call["position_embeddings"]
        self._images += packed_image_significance(
            output, cos, sin, self._call["cu_seqlens"], self.num_heads, self.scale, self.mode, self.merge_unit
        )
        self._call = None

    @property
    def significance(self) -> list[torch.Tensor]:
        """Per image seen while active, in the order they ran: one float32 score per LLM token (merge group)."""
        if not self._images:
            raise RuntimeError("no attention was captured: the hooked block did not run")
        return list(self._images)

"""Cheap capture of one vision layer's queries and keys, reduced at once to per-token significance by a scorer.

``output_attentions=True`` would force eager attention in every layer and keep every layer's maps. Instead we hook
only the projections of the one layer we need, hand its queries and keys to the scorer (``fopru_eval/core/
scoring.py``) and keep the (images, patches) significance. The encoder itself keeps running with SDPA or flash
attention, untouched; the hooks are removed on exit.

Two shapes of layer exist among the families:
  ``SignificanceCapture``         separate q/k projections over a (batch, tokens, width) batch (CLIP, SigLIP);
  ``PackedSignificanceCapture``   a fused qkv projection over a packed sequence of images split by ``cu_seqlens``,
                                  with a rotary embedding (Qwen2-VL, Qwen2.5-VL).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fopru_eval.core.attention import split_heads
from fopru_eval.core.packed import packed_image_significance
from fopru_eval.core.scoring import SCORERS, Scorer


class _Capture:
    """Hook bookkeeping shared by the captures: install on enter, remove on exit, keep each reduction's result.

    With ``timed=True`` the seconds spent inside each reduction go to ``reduction_seconds`` (on CUDA, after waiting
    for the GPU at both ends), which is how the benchmark measures what significance costs.
    """

    def __init__(self, scorer: Scorer | str, timed: bool = False) -> None:
        self.scorer = SCORERS.get(scorer) if isinstance(scorer, str) else scorer
        self.timed = timed
        self.reduction_seconds: list[float] = []
        self._results: list[torch.Tensor] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _install(self) -> list[torch.utils.hooks.RemovableHandle]:
        raise NotImplementedError

    def _forget_call(self) -> None:
        """Drop what a half-finished forward left behind."""

    def __enter__(self) -> Any:
        self._results.clear()
        self.reduction_seconds.clear()
        self._handles = self._install()
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._forget_call()

    def _keep(self, reduce: Callable[[], list[torch.Tensor]], device: torch.device) -> None:
        if not self.timed:
            self._results += reduce()
            return
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        self._results += reduce()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.reduction_seconds.append(time.perf_counter() - start)

    def _captured(self) -> list[torch.Tensor]:
        if not self._results:
            raise RuntimeError("no attention was captured: the hooked layer did not run")
        return self._results


class SignificanceCapture(_Capture):
    """While active, each forward through ``query_proj``/``key_proj`` adds the significance of a batch of images,
    and, with ``keep_keys``, each image's patch keys averaged over heads (VisionZip's similarity metric).

    The layer computes its queries before its keys, so the key hook finds the queries already stored.
    """

    def __init__(
        self,
        query_proj: nn.Module,
        key_proj: nn.Module,
        num_heads: int,
        scale: float,
        num_prefix_tokens: int,
        scorer: Scorer | str,
        timed: bool = False,
        keep_keys: bool = False,
    ) -> None:
        super().__init__(scorer, timed)
        self.query_proj, self.key_proj = query_proj, key_proj
        self.num_heads, self.scale, self.num_prefix_tokens = num_heads, scale, num_prefix_tokens
        self.keep_keys = keep_keys
        self._queries: torch.Tensor | None = None
        self._keys: list[torch.Tensor] = []

    def __enter__(self) -> SignificanceCapture:
        self._keys.clear()
        return super().__enter__()

    def _install(self) -> list[torch.utils.hooks.RemovableHandle]:
        return [
            self.query_proj.register_forward_hook(self._keep_queries),
            self.key_proj.register_forward_hook(self._reduce),
        ]

    def _forget_call(self) -> None:
        self._queries = None

    def _keep_queries(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self._queries = output

    def _reduce(self, module: nn.Module, args: tuple, keys: torch.Tensor) -> None:
        if self._queries is None:
            raise RuntimeError("the key projection ran before the query projection; cannot rebuild the attention map")
        queries, self._queries = split_heads(self._queries, self.num_heads), None
        keys = split_heads(keys, self.num_heads)
        self._keep(lambda: list(self.scorer.score(queries, keys, self.scale, self.num_prefix_tokens)), keys.device)
        if self.keep_keys:
            self._keys += list(keys[:, :, self.num_prefix_tokens :].mean(dim=1))

    @property
    def keys(self) -> torch.Tensor:
        """(images, patches, head_dim): each image's patch keys averaged over heads, in the order they ran."""
        if not self._keys:
            raise RuntimeError("no keys were captured: the hooked layer did not run, or keep_keys is off")
        return torch.stack(self._keys)

    @property
    def significance(self) -> torch.Tensor:
        """(images, patches) significance of every image seen while active, in the order they ran."""
        return torch.stack(self._captured())


class PackedSignificanceCapture(_Capture):
    """While active, each forward through ``attention`` adds one significance vector per image, one score per LLM
    token (merge group of ``merge_unit`` patches).

    ``attention`` is a vision block's attention module with a fused ``qkv`` projection, called with keyword arguments
    ``cu_seqlens`` and ``position_embeddings=(cos, sin)``, as in Qwen2-VL and Qwen2.5-VL: a pre-hook keeps those, and
    a hook on ``qkv`` rotates its queries and keys as the block does and scores each image on its own.
    """

    def __init__(
        self,
        attention: nn.Module,
        num_heads: int,
        scale: float,
        merge_unit: int,
        scorer: Scorer | str,
        timed: bool = False,
    ) -> None:
        super().__init__(scorer, timed)
        self.attention, self.num_heads, self.scale, self.merge_unit = attention, num_heads, scale, merge_unit
        self._call: dict[str, Any] | None = None

    def _install(self) -> list[torch.utils.hooks.RemovableHandle]:
        return [
            self.attention.register_forward_pre_hook(self._keep_call, with_kwargs=True),
            self.attention.qkv.register_forward_hook(self._reduce),
        ]

    def _forget_call(self) -> None:
        self._call = None

    def _keep_call(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if "cu_seqlens" not in kwargs or kwargs.get("position_embeddings") is None:
            raise RuntimeError(
                f"{type(module).__name__} was called without cu_seqlens/position_embeddings keywords; "
                "cannot rebuild its per-image attention"
            )
        self._call = kwargs

    def _reduce(self, module: nn.Module, args: tuple, qkv: torch.Tensor) -> None:
        if self._call is None:
            raise RuntimeError("the qkv projection ran outside its attention module; cannot rebuild the attention map")
        cos, sin = self._call["position_embeddings"]
        cu_seqlens, self._call = self._call["cu_seqlens"], None
        self._keep(
            lambda: packed_image_significance(
                qkv, cos, sin, cu_seqlens, self.num_heads, self.scale, self.scorer.score, self.merge_unit
            ),
            qkv.device,
        )

    @property
    def significance(self) -> list[torch.Tensor]:
        """Per image seen while active, in the order they ran: one score per LLM token (merge group)."""
        return list(self._captured())


class InputCapture:
    """While active, keeps the first positional input of every call to ``module`` (e.g. what a projector reads)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.inputs: list[torch.Tensor] = []
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def __enter__(self) -> InputCapture:
        self.inputs.clear()
        self._handle = self.module.register_forward_pre_hook(lambda module, args: self.inputs.append(args[0]))
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._handle is not None:
            self._handle.remove()
        self._handle = None

"""Qwen2-VL and Qwen2.5-VL: a packed tower with no CLS token, 2 x 2 merged LLM tokens, 3-D M-RoPE positions.

Images are resized as qwen-vl-utils resizes them, then the processor gives one ``<|image_pad|>`` per LLM token (per
2 x 2 patch group). Significance comes from one full-attention block, per image (``cu_seqlens``), pooled per merge
group (``fopru_eval/core/packed.py``); the view is the merged grid (h / 2 x w / 2).

Positions (transformers 5.23). Each kept token, text or visual, keeps the (t, h, w) position it has in the unpruned
sequence, as the model's own ``get_rope_index`` computes it there. The ids go to ``generate`` in the (4, batch,
length) layout ``generate`` itself builds for Qwen-VL (``generation_position_ids``). Given ``position_ids``,
``generate`` never calls ``get_rope_index`` and never reads the model's cached ``rope_deltas``: each step appends
``last + 1`` on every row, and the last prompt token is text, so that is exactly the unpruned sequence's next
position: what ``rope_deltas`` gives for the unpruned prompt.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn
from transformers import (
    PretrainedConfig,
    PreTrainedModel,
    ProcessorMixin,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLForConditionalGeneration,
)
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel
from transformers.vision_utils import get_vision_window_index

from fopru_eval.core.config import PruningConfig
from fopru_eval.core.flops import Blocks, linear, window_pairs
from fopru_eval.core.layout import ImageLayout
from fopru_eval.core.packed import undo_window_order
from fopru_eval.core.scoring import Scorer
from fopru_eval.core.sequence import generation_position_ids
from fopru_eval.families.base import EncodedImages, Family, Prompt
from fopru_eval.families.hooks import PackedSignificanceCapture

# qwen-vl-utils' own pixel limits for an image given without min_pixels/max_pixels: 4 to 16384 tokens of 28 x 28.
QWEN_VL_UTILS_PIXEL_LIMITS = (4 * 28 * 28, 16384 * 28 * 28)


class QwenVL(Family):
    """What both Qwen-VL families share; each declares its block, and Qwen2.5-VL its window order."""

    tower_class: ClassVar[type[PreTrainedModel]]

    def __init__(
        self,
        model: PreTrainedModel,
        processor: ProcessorMixin,
        presize_limits: tuple[int, int] = QWEN_VL_UTILS_PIXEL_LIMITS,
    ) -> None:
        super().__init__(model, processor)
        # The pixel limits of the qwen-vl-utils resize that precedes the processor (``prepare_image``).
        self.presize_limits = presize_limits

    @staticmethod
    def significance_block(vision_config: PretrainedConfig) -> int:
        """Index of the vision block whose attention map gives the significance."""
        raise NotImplementedError

    def merge_group_order(self, grid_thw: torch.Tensor) -> torch.Tensor | None:
        """The order in which the tower's blocks see each image's merge groups, if not raster order."""
        return None

    def tower_block_flops(self, frames: int, rows: int, cols: int) -> int:
        """The vision blocks' FLOPs over ``frames`` frames of rows x cols patches (attention within each frame)."""
        raise NotImplementedError

    def image_flops(self, encoded: dict[str, Any], image_index: int) -> int:
        """The patch embedding and the vision blocks over every patch, then the merger (two linear layers over each
        group of spatial_merge_size^2 patches)."""
        vision, text = self.model.config.vision_config, self.model.config.text_config
        frames, rows, cols = encoded["image_grid_thw"][image_index].tolist()
        patches, width = frames * rows * cols, self.tower_width
        groups, group_width = patches // vision.spatial_merge_size**2, width * vision.spatial_merge_size**2
        return (
            linear(patches, vision.in_channels * vision.temporal_patch_size * vision.patch_size**2, width)
            + self.tower_block_flops(frames, rows, cols)
            + linear(groups, group_width, group_width)
            + linear(groups, group_width, text.hidden_size)
        )

    @property
    def tower_width(self) -> int:
        raise NotImplementedError

    # ----- the vision side -----------------------------------------------------------------------------------------

    @classmethod
    def tower_capture(
        cls, tower: nn.Module, config: PretrainedConfig, scorer: Scorer | str, timed: bool = False
    ) -> PackedSignificanceCapture:
        """The capture on a Qwen-VL tower (``config`` is the whole model's), also for a tower built on its own."""
        attention = tower.blocks[cls.significance_block(config.vision_config)].attn
        merge_unit = config.vision_config.spatial_merge_size**2
        return PackedSignificanceCapture(attention, attention.num_heads, attention.scaling, merge_unit, scorer, timed)

    @classmethod
    def random_tower_inputs(cls, config: PretrainedConfig, images: int, generator: torch.Generator) -> dict[str, Any]:
        """``images`` images of 32 x 32 patches each (448 x 448 pixels at 14-pixel patches, 512 x 512 at 16)."""
        vision = config.vision_config
        patch = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
        return {
            "hidden_states": torch.randn(images * 32 * 32, patch, generator=generator),
            "grid_thw": torch.tensor([[1, 32, 32]] * images),
        }

    def significance_capture(self, scorer: Scorer | str, timed: bool = False) -> PackedSignificanceCapture:
        return self.tower_capture(self.model.model.visual, self.model.config, scorer, timed)

    @property
    def merge_size(self) -> int:
        return self.model.config.vision_config.spatial_merge_size

    def prepare_image(self, image: Image.Image) -> Image.Image:
        """Resize as qwen-vl-utils does before the processor sees the image (PIL bicubic to multiples of 28 pixels
        within the pixel limits), as lmms-eval's Qwen adapters and Qwen's model cards do. The processor's own
        (torchvision) resize would give slightly different pixels."""
        factor = self.processor.image_processor.patch_size * self.processor.image_processor.merge_size
        height, width = qwen_vl_utils_smart_resize(image.height, image.width, factor, *self.presize_limits)
        return image.resize((width, height), Image.Resampling.BICUBIC)

    def encode_images(
        self, encoded: dict[str, Any], scorer: Scorer | None, reads: frozenset[str] = frozenset()
    ) -> EncodedImages:
        """Features and significance per image, both in raster order of the image's merged grid."""
        inputs = self.tower_inputs(encoded, "image_grid_thw")
        output, scores = self.run_tower(partial(self.model.get_image_features, **inputs, return_dict=True), scorer)
        order = self.merge_group_order(inputs["image_grid_thw"])
        if scores is not None and order is not None:
            scores = undo_window_order(scores, order)
        grids = encoded["image_grid_thw"].tolist()  # an image is one frame: t = 1
        layouts = [ImageLayout.single((h // self.merge_size, w // self.merge_size)) for _, h, w in grids]
        return EncodedImages(list(output.pooler_output), layouts, scores, self.extra_features(output))

    # ----- positions -----------------------------------------------------------------------------------------------

    def unpruned_positions(
        self, ids: torch.Tensor, encoded: dict[str, Any], image_indices: range, video_indices: range = range(0)
    ) -> torch.Tensor:
        """(3, length) M-RoPE positions of the unpruned sequence, by the model's own rule."""
        grids = encoded["image_grid_thw"][image_indices.start : image_indices.stop] if len(image_indices) else None
        token_types = torch.tensor(self.processor.create_mm_token_type_ids([ids.tolist()]))
        videos = {}
        if video_indices:
            videos["video_grid_thw"] = encoded["video_grid_thw"][video_indices.start : video_indices.stop]
        positions, _ = self.model.model.get_rope_index(
            ids[None], mm_token_type_ids=token_types, image_grid_thw=grids, **videos
        )
        return positions[:, 0]

    def position_ids(self, kept_positions: list[torch.Tensor], config: PruningConfig) -> torch.Tensor:
        # Kept tokens always keep their 3-D ids: compact positions would put image tokens off their grid.
        return generation_position_ids(kept_positions)

    def ideal_inputs(self, prompts: list[Prompt], image_tokens: list[int]) -> dict[str, Any]:
        # A 1 x count merged grid, so that the model computes the M-RoPE positions itself, as for any image.
        inputs = super().ideal_inputs(prompts, image_tokens)
        inputs["mm_token_type_ids"] = (inputs["input_ids"] == self.model.config.image_token_id).long()
        grid = [[1, self.merge_size, self.merge_size * count] for count in image_tokens]
        inputs["image_grid_thw"] = torch.tensor(grid, device=self.device)
        return inputs


class Qwen2VL(QwenVL):
    """Significance from the last vision block, the one whose output the merger reads (every Qwen2-VL block attends
    over the whole image)."""

    model_type = "qwen2_vl"
    label = "Qwen2-VL"
    model_class = Qwen2VLForConditionalGeneration
    example_checkpoint = "Qwen/Qwen2-VL-7B-Instruct"
    tower_class = Qwen2VisionTransformerPretrainedModel

    @property
    def tower_width(self) -> int:
        return self.model.config.vision_config.embed_dim

    def tower_block_flops(self, frames: int, rows: int, cols: int) -> int:
        vision = self.model.config.vision_config
        width, heads = self.tower_width, vision.num_heads
        blocks = Blocks(vision.depth, width, heads, heads, width // heads, width * vision.mlp_ratio, gated=False)
        return blocks.flops(frames * rows * cols, frames * (rows * cols) ** 2)

    @staticmethod
    def significance_block(vision_config: PretrainedConfig) -> int:
        return vision_config.depth - 1


class Qwen2_5_VL(QwenVL):
    """Significance from the last full-attention block (``fullatt_block_indexes``; the other blocks attend within
    windows, so their maps are not whole-image maps)."""

    model_type = "qwen2_5_vl"
    label = "Qwen2.5-VL"
    model_class = Qwen2_5_VLForConditionalGeneration
    example_checkpoint = "Qwen/Qwen2.5-VL-7B-Instruct"
    tower_class = Qwen2_5_VisionTransformerPretrainedModel

    @property
    def tower_width(self) -> int:
        return self.model.config.vision_config.hidden_size

    def tower_block_flops(self, frames: int, rows: int, cols: int) -> int:
        """Full attention in the ``fullatt_block_indexes`` blocks, attention within window_size-pixel windows in the
        others; a gated MLP."""
        vision = self.model.config.vision_config
        width, heads = self.tower_width, vision.num_heads
        blocks = Blocks(vision.depth, width, heads, heads, width // heads, vision.intermediate_size, gated=True)
        full = len(vision.fullatt_block_indexes)
        window = vision.window_size // vision.patch_size
        patches = frames * rows * cols
        return blocks.flops(patches, frames * (rows * cols) ** 2, layers=full) + blocks.flops(
            patches, frames * window_pairs(rows, cols, window), layers=vision.depth - full
        )

    @classmethod
    def check_config(cls, config: PretrainedConfig, checkpoint: str, who: str) -> None:
        if not config.vision_config.fullatt_block_indexes:
            raise ValueError(
                f"{checkpoint} has no full-attention vision block (vision_config.fullatt_block_indexes is empty); "
                "FoPru needs one whole-image attention map"
            )

    @staticmethod
    def significance_block(vision_config: PretrainedConfig) -> int:
        return max(vision_config.fullatt_block_indexes)

    def merge_group_order(self, grid_thw: torch.Tensor) -> torch.Tensor:
        # The window permutation the tower applies to merge groups before its blocks (and undoes after the merger).
        vision = self.model.config.vision_config
        window_index, _ = get_vision_window_index(
            grid_thw, vision.spatial_merge_size, vision.window_size, vision.patch_size
        )
        return window_index


def qwen_vl_utils_smart_resize(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """The size qwen-vl-utils 0.0.14 resizes an image to (``smart_resize``): both sides multiples of ``factor``,
    the area within [min_pixels, max_pixels], the aspect ratio kept as closely as possible. Transformers' own
    ``smart_resize`` differs at the edges (sides shorter than factor / 2), so this one is written out."""
    ratio = max(height, width) / min(height, width)
    if ratio > 200:
        raise ValueError(f"absolute aspect ratio must be smaller than 200, got {ratio}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar

"""Qwen3-VL: Qwen2-VL's data path (``qwen_vl.py``) with 16-pixel patches, and DeepStack.

What differs from Qwen2-VL, and only that, is declared here:
- Images resize to multiples of 32 pixels (16-pixel patches, 2 x 2 merge), within qwen-vl-utils' limits for that
  factor when none are given.
- Every vision block attends over the whole image; significance comes from the last, whose output the main merger
  reads.
- DeepStack: blocks ``deepstack_visual_indexes`` each feed a merger of their own, whose output (one vector per LLM
  visual token, like the main features) is added to the hidden states of LLM layer 0, 1, ... at the visual tokens'
  places. Each is an extra feature stream of the image (``EncodedImages.extra_features``), which the driver prunes with
  the same kept positions as the main features, so every injected copy lands on the token it belongs to.
- Positions: ``get_rope_index`` numbers images exactly as Qwen2-VL's does (the text rotary embedding interleaves the
  t, h and w frequencies, which changes nothing in the ids), so kept tokens keep their unpruned 3-D ids as there.
- Videos: the tower merges 2 frames into one temporal patch and attends within each temporal patch, so a video is
  one view per temporal patch (its merged h / 2 x w / 2 grid, from ``video_grid_thw``), each with its own attention
  map, selected with the per-view budget. The processor writes each temporal patch as its own run of placeholders
  behind a timestamp ("<0.5 seconds>", from the video's ``video_metadata``: its fps and sampled frames' indices, 24 fps
  assumed without) and ``get_rope_index`` numbers each run like a one-frame image after that text; kept tokens keep
  those unpruned ids, and the DeepStack video features are pruned like the main ones.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from transformers import PretrainedConfig, PreTrainedModel, ProcessorMixin, Qwen3VLForConditionalGeneration
from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures, Qwen3VLVisionModel

from fopru_eval.core.flops import Blocks, linear
from fopru_eval.core.layout import ImageLayout
from fopru_eval.core.scoring import Scorer
from fopru_eval.families.base import EncodedImages
from fopru_eval.families.qwen_vl import QwenVL

# qwen-vl-utils' own limits for an image given without min_pixels/max_pixels, at Qwen3-VL's factor (image_patch_size=16,
# as lmms-eval's qwen3_vl passes it): 4 to 16384 tokens of 32 x 32 pixels.
QWEN3_VL_UTILS_PIXEL_LIMITS = (4 * 32 * 32, 16384 * 32 * 32)


class Qwen3VL(QwenVL):
    """Significance from the last vision block; the DeepStack features pruned with the main ones."""

    model_type = "qwen3_vl"
    label = "Qwen3-VL"
    model_class = Qwen3VLForConditionalGeneration
    example_checkpoint = "Qwen/Qwen3-VL-8B-Instruct"
    tower_class = Qwen3VLVisionModel

    def __init__(
        self,
        model: PreTrainedModel,
        processor: ProcessorMixin,
        presize_limits: tuple[int, int] = QWEN3_VL_UTILS_PIXEL_LIMITS,
    ) -> None:
        super().__init__(model, processor, presize_limits)

    @staticmethod
    def significance_block(vision_config: PretrainedConfig) -> int:
        return vision_config.depth - 1

    @property
    def tower_width(self) -> int:
        return self.model.config.vision_config.hidden_size

    def tower_block_flops(self, frames: int, rows: int, cols: int) -> int:
        vision = self.model.config.vision_config
        width, heads = self.tower_width, vision.num_heads
        blocks = Blocks(vision.depth, width, heads, heads, width // heads, vision.intermediate_size, gated=False)
        return blocks.flops(frames * rows * cols, frames * (rows * cols) ** 2)

    def image_flops(self, encoded: dict[str, Any], image_index: int) -> int:
        """As for Qwen2-VL, plus the DeepStack mergers: each two more linear layers over every merge group."""
        vision, text = self.model.config.vision_config, self.model.config.text_config
        groups = int(encoded["image_grid_thw"][image_index].prod()) // vision.spatial_merge_size**2
        group_width = self.tower_width * vision.spatial_merge_size**2
        merger = linear(groups, group_width, group_width) + linear(groups, group_width, text.hidden_size)
        return super().image_flops(encoded, image_index) + len(vision.deepstack_visual_indexes) * merger

    # ----- DeepStack ------------------------------------------------------------------------------------------------

    @classmethod
    def first_llm_stage_layer(cls, config: PretrainedConfig) -> int:
        # The model adds DeepStack features to the visual tokens after LLM layers 0 .. n - 1, by their full-length
        # positions: tokens can be dropped only once every one has been added.
        return max(1, len(config.vision_config.deepstack_visual_indexes))

    @classmethod
    def llm_stage_floor_reason(cls, config: PretrainedConfig) -> str:
        layers = len(config.vision_config.deepstack_visual_indexes)
        return f" (DeepStack adds visual features after LLM layers 0 .. {layers - 1}, at every visual token)"

    def extra_features(self, output: BaseModelOutputWithDeepstackFeatures) -> list[list[torch.Tensor]]:
        """Per image, its DeepStack features, one tensor per injected LLM layer (the model gives them per layer,
        then per image)."""
        return [list(image) for image in zip(*output.deepstack_features, strict=True)]

    def encoder_outputs(
        self, features: list[torch.Tensor], extra_features: list[list[torch.Tensor]]
    ) -> BaseModelOutputWithDeepstackFeatures:
        layers = [list(layer) for layer in zip(*extra_features, strict=True)]
        return BaseModelOutputWithDeepstackFeatures(pooler_output=features, deepstack_features=layers)

    # ----- videos ---------------------------------------------------------------------------------------------------

    has_video = True

    def video_processor_kwargs(self) -> dict[str, Any]:
        # A prompt's frames are already sampled, as lmms-eval's qwen3_vl samples them (qwen-vl-utils) before the
        # processor: the processor must not sample again (the video kwargs qwen-vl-utils returns say just that).
        return {"do_sample_frames": False}

    def video_layout(self, grid_thw: list[int]) -> ImageLayout:
        """One view per temporal patch, the patches' merged grids one after another; a token's source is its own
        packed position, as each patch's significance is concatenated in the same order."""
        patches, rows, cols = grid_thw[0], grid_thw[1] // self.merge_size, grid_thw[2] // self.merge_size
        return ImageLayout.stacked((rows, cols), patches)

    def encode_videos(self, encoded: dict[str, Any], scorer: Scorer | None) -> EncodedImages:
        """Features, DeepStack features and significance per video, each temporal patch in raster order."""
        inputs = {
            "pixel_values_videos": encoded["pixel_values_videos"].to(self.device, self.model.dtype),
            "video_grid_thw": encoded["video_grid_thw"].to(self.device),
        }
        output, scores = self.run_tower(partial(self.model.get_video_features, **inputs, return_dict=True), scorer)
        grids = encoded["video_grid_thw"].tolist()
        if scores is not None:
            # The capture scores each attention segment, here each temporal patch: gather them per video.
            starts = torch.tensor([0] + [t for t, _, _ in grids]).cumsum(0).tolist()
            scores = [torch.cat(scores[a:b]) for a, b in zip(starts[:-1], starts[1:], strict=True)]
        layouts = [self.video_layout(grid) for grid in grids]
        return EncodedImages(list(output.pooler_output), layouts, scores, self.extra_features(output))

    def video_flops(self, encoded: dict[str, Any], video_index: int) -> int:
        # The tower treats a video as an image of t temporal patches, attending within each: the image count applies.
        return self.image_flops({"image_grid_thw": encoded["video_grid_thw"]}, video_index)

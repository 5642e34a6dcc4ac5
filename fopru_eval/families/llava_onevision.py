"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``), images: LLaVA-NeXT's anyres views on a SigLIP tower.

What differs from LLaVA-NeXT (``llava_next.py``):
  - the tower is SigLIP, which has no CLS token: every patch is a visual token (``vision_feature_select_strategy``
    "full") and ``significance=cls`` is refused;
  - anyres-max: when the unpadded mosaic holds more than about N base views of patches (``vision_aspect_ratio``
    "anyres_max_N"), the model shrinks it by bilinear interpolation, so one packed token can blend up to four tower
    tokens. Interpolation is linear, so each image's significance is packed by the model's own ``pack_image_features``
    exactly as its features are: a packed token's score is the same blend of its sources' scores, and the layout (the
    mosaic's grid and its newlines) is read off the packed output.

As in LLaVA-NeXT, the base view comes first (no newline after it), then the mosaic, each row ended by an
``image_newline``; the budgets per view and the newline rule are LLaVA-NeXT's. The driver hands the processor a flat
list of images, as lmms-eval's ``llava_hf`` does, so every image, also in a sample with several, gets anyres views.

Videos: every frame is one tower view, projected, then pooled 2 x 2 by the model's own ``apply_pooling`` (bilinear,
to ceil(side / 2) per side); the frames' tokens follow one another in raster order and one ``image_newline`` ends the
video. Each frame is a view of its own, selected with the per-view budget; its significance is the frame's attention
map pooled by the same ``apply_pooling`` (linear, so each pooled token's score is the same blend as its feature).
The newline marks the end of the video, not a row, so it always stays (a fixed marker).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
from transformers import LlavaOnevisionForConditionalGeneration, SiglipVisionModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from fopru_eval.core.layout import AnyresLayout, ImageLayout
from fopru_eval.core.scoring import Scorer
from fopru_eval.families.base import EncodedImages
from fopru_eval.families.llava_next import LlavaNext


class LlavaOnevision(LlavaNext):
    model_type = "llava_onevision"
    label = "LLaVA-OneVision"
    model_class = LlavaOnevisionForConditionalGeneration
    example_checkpoint = "llava-hf/llava-onevision-qwen2-7b-ov-hf"
    tower_class = SiglipVisionModel
    towers = ("siglip_vision_model",)
    # Interpolation blends tower tokens into packed ones, so a packed token has no one tower feature or key.
    tower_reads = ()

    def pack(self, values: torch.Tensor, image_size: torch.Tensor) -> torch.Tensor:
        """(packed tokens, channels): the (views, tokens, channels) ``values`` of one image's tower tokens, unpadded,
        interpolated and ordered by the model's own ``pack_image_features``, in float64, with NaN for each newline."""
        newline = torch.full(values.shape[-1:], float("nan"), dtype=torch.float64)
        [packed], _ = self.model.model.pack_image_features(
            [values.to(torch.float64).cpu()],
            image_size.view(1, 2).cpu(),
            image_newline=newline,
            vision_aspect_ratio=self.model.config.vision_aspect_ratio,
        )
        return packed

    def layout(self, image_size: torch.Tensor) -> AnyresLayout:
        views, tokens = self.num_views(image_size), self.grid[0] * self.grid[1]
        packed = self.pack(torch.zeros(views, tokens, 1), image_size)
        return AnyresLayout.from_markers(packed[:, 0].isnan(), self.grid)

    def image_scores(self, view_scores: torch.Tensor, image_size: torch.Tensor) -> torch.Tensor:
        """The per-view significance packed like the features: indexed by packed position, NaN at newlines."""
        return self.pack(view_scores.unsqueeze(-1), image_size)[:, 0]

    # ----- videos ---------------------------------------------------------------------------------------------------

    has_video = True

    @property
    def pooled_grid(self) -> tuple[int, int]:
        """One video frame's token grid after ``apply_pooling``."""
        return math.ceil(self.grid[0] / 2), math.ceil(self.grid[1] / 2)

    def video_layout(self, frames: int) -> ImageLayout:
        """``frames`` views of the pooled grid one after another, then the video's newline; a token's source is its
        own packed position, as the significance is pooled and flattened like the features."""
        grid = self.pooled_grid
        return ImageLayout.stacked(grid, frames, fixed_markers=torch.tensor([frames * grid[0] * grid[1]]))

    def encode_videos(self, encoded: dict[str, Any], scorer: Scorer | None) -> EncodedImages:
        """The tower runs once over every frame of every video, as ``get_video_features`` runs it, so one capture
        yields one row per frame."""
        pixels = encoded["pixel_values_videos"].to(self.device, self.model.dtype)
        forward = partial(self.model.get_video_features, pixel_values_videos=pixels, return_dict=True)
        output, scores = self.run_tower(forward, scorer)
        videos, frames = pixels.shape[:2]
        if scores is not None:
            per_frame = torch.stack(scores).to(torch.float64).cpu().view(videos * frames, -1, 1)
            pooled = self.model.model.apply_pooling(per_frame)
            scores = list(pooled.view(videos, -1))
        return EncodedImages(list(output.pooler_output), [self.video_layout(frames)] * videos, scores)

    def video_flops(self, encoded: dict[str, Any], video_index: int) -> int:
        """Every frame is one tower view (the 2 x 2 pooling is not counted: a few operations per output value)."""
        return encoded["pixel_values_videos"].shape[1] * self.view_flops()

    def video_encoder_outputs(
        self, features: list[torch.Tensor], extra_features: list[list[torch.Tensor]]
    ) -> BaseModelOutputWithPooling:
        # The model flattens a (videos, tokens, channels) tensor; pruned videos differ in length, so all go in one row.
        return BaseModelOutputWithPooling(pooler_output=torch.cat(features)[None])

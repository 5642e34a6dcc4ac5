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
"""

from __future__ import annotations

import torch
from transformers import LlavaOnevisionForConditionalGeneration, SiglipVisionModel

from fopru_eval.core.layout import AnyresLayout
from fopru_eval.families.llava_next import LlavaNext


class LlavaOnevision(LlavaNext):
    model_type = "llava_onevision"
    label = "LLaVA-OneVision"
    model_class = LlavaOnevisionForConditionalGeneration
    example_checkpoint = "llava-hf/llava-onevision-qwen2-7b-ov-hf"
    tower_class = SiglipVisionModel
    towers = ("siglip_vision_model",)

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

"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``): anyres, two views per image, newline row markers.

The processor gives each image a base view plus crops (``image_grid_pinpoints``); the CLIP tower runs over every view,
and the model's own ``pack_image_features`` stitches the crops into a mosaic, unpads it and appends an
``image_newline`` after each mosaic row. Each image is selected as two views (``fopru_eval/core/layout.py``): the base
view on its h x w grid (24 x 24 for llava-v1.6) and the unpadded mosaic on its R x C grid, which is rarely square.
Every token is scored by the attention map of the tower view it was seen in (the base view, or its own crop); ``row``
ranks the rows of each grid, so a mosaic row spans every crop it crosses.

Budget, per view: ``keep_ratio=r`` keeps floor(N * r) of a view's N tokens (at least 1); ``keep_tokens=k`` keeps at
most k tokens of each view, so up to 2k per image; ``row`` keeps floor(R * r) of a view's R rows (at least 1), or as
many whole rows as k tokens allow.

Newlines are row markers: never scored, never counted in ``visual_tokens_kept/total``; a row's newline stays exactly
when the row keeps at least one visual token. They are counted apart, in ``newline_tokens_kept/total``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from transformers import LlavaNextForConditionalGeneration
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from fopru_eval.core.layout import NEWLINE, AnyresLayout
from fopru_eval.core.scoring import Scorer
from fopru_eval.families.base import EncodedImages
from fopru_eval.families.llava import Llava


class LlavaNext(Llava):
    model_type = "llava_next"
    label = "LLaVA-NeXT"
    model_class = LlavaNextForConditionalGeneration
    example_checkpoint = "llava-hf/llava-v1.6-mistral-7b-hf"
    has_newlines = True

    def num_views(self, image_size: torch.Tensor) -> int:
        """Tower views of one image (the base view plus its crops), as ``get_image_features`` counts them."""
        config = self.model.config
        return image_size_to_num_patches(image_size, config.image_grid_pinpoints, config.vision_config.image_size)

    def tower_views(self, encoded: dict[str, Any], image_index: int) -> int:
        return self.num_views(encoded["image_sizes"][image_index])

    def layout(self, image_size: torch.Tensor) -> AnyresLayout:
        """Where each packed token of an image of ``image_size`` (height, width) comes from.

        Rather than re-deriving the unpadding arithmetic, the model's own ``pack_image_features`` packs the tower
        token numbers (view * tokens_per_view + patch) in place of features, with ``NEWLINE`` as the newline
        "feature": the result is exactly the order in which the real features reach the LLM.
        """
        views, tokens = self.num_views(image_size), self.grid[0] * self.grid[1]
        # float64 holds every token number exactly; one "feature" channel is enough.
        token_numbers = torch.arange(views * tokens, dtype=torch.float64).view(views, tokens, 1)
        [packed], _ = self.model.pack_image_features(
            [token_numbers],
            image_size.view(1, 2),
            vision_feature_select_strategy="default",
            image_newline=torch.tensor([float(NEWLINE)], dtype=torch.float64),
        )
        return AnyresLayout.from_sources(packed.flatten(), self.grid)

    def encode_images(
        self, encoded: dict[str, Any], scorer: Scorer | None, reads: frozenset[str] = frozenset()
    ) -> EncodedImages:
        """The tower runs once over every view of every image, so one capture yields one row per view, each from that
        view's own attention map; an image's rows, flattened, are indexed by its layout's sources (and so are its
        views' keys and tower features, where read)."""
        inputs = self.tower_inputs(encoded, "image_sizes")
        forward = partial(self.model.get_image_features, **inputs, return_dict=True)
        output, scores, keys, tower_features = self.read_tower(forward, scorer, reads)
        image_sizes = encoded["image_sizes"]
        layouts = [self.layout(size) for size in image_sizes]
        views = [self.num_views(size) for size in image_sizes]
        if scores is not None:
            split = torch.stack(scores).split(views)
            scores = [self.image_scores(image, size) for image, size in zip(split, image_sizes, strict=True)]
        keys, tower_features = (
            [image.flatten(0, 1) for image in torch.stack(stream).split(views)] if stream is not None else None
            for stream in (keys, tower_features)
        )
        return EncodedImages(list(output.pooler_output), layouts, scores, keys=keys, tower_features=tower_features)

    def image_scores(self, view_scores: torch.Tensor, image_size: torch.Tensor) -> torch.Tensor:
        """One image's significance, indexed by its layout's sources, from its (views, tokens) per-view scores: here
        the tower token numbers, so the scores flattened."""
        return view_scores.flatten()

"""``llava_next_fopru``: LLaVA-NeXT (``LlavaNextForConditionalGeneration``) with FoPru pruning.

Data path per batch: processor (anyres: per image a base view plus crops) -> CLIP tower over every view, with one
significance vector per view captured from the feature layer's attention -> the model's own packing (the crops
stitched into a mosaic, unpadded, an ``image_newline`` after each mosaic row) -> selection per view -> placeholders of
pruned tokens dropped from ``input_ids`` -> the HF model runs on the kept packed features, passed as
``mm_encoder_outputs``, so its own embedding merge and generation loop stay untouched.

Views. Each image is selected as two views (``fopru_eval/anyres.py``): the base view on its h x w grid (24 x 24 for
llava-v1.6) and the unpadded crop mosaic on its R x C grid, which is rarely square. Every token is scored by the
attention map of the tower view it was seen in (the base view, or its own crop); ``row`` ranks the rows of each grid,
so a mosaic row spans every crop it crosses.

Budget, per view: ``keep_ratio=r`` keeps floor(N * r) of a view's N tokens (at least 1); ``keep_tokens=k`` keeps at
most k tokens of each view, so up to 2k per image; ``row`` keeps floor(R * r) of a view's R rows (at least 1), or as
many whole rows as k tokens allow.

Newlines are layout markers, not visual tokens: never scored, never counted in ``visual_tokens_kept/total``. A row's
newline stays exactly when the row keeps at least one visual token (``none`` keeps them all; ``row`` keeps the newline
of each kept row). They are counted apart, in ``newline_tokens_kept/total``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from transformers import LlavaNextForConditionalGeneration
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from fopru_eval.anyres import NEWLINE, AnyresLayout
from fopru_eval.sequence import surviving_positions, unpad
from fopru_model_adapters.base import PreparedBatch, Prompt, VisualTokenCounts
from fopru_model_adapters.llava import LlavaFoPru


@dataclass
class AnyresTokenCounts(VisualTokenCounts):
    """Per-sample counts plus the ``image_newline`` tokens the LLM kept, summed over the sample's images."""

    newline_tokens_kept: int | None = None
    newline_tokens_total: int | None = None

    def to_dict(self) -> dict[str, int | None]:
        counts = super().to_dict()
        counts["newline_tokens_kept"] = self.newline_tokens_kept
        counts["newline_tokens_total"] = self.newline_tokens_total
        return counts


@dataclass
class AnyresPreparedBatch(PreparedBatch):
    """A prepared batch that also knows how many newline tokens each sample kept."""

    newline_tokens_kept: list[int]
    newline_tokens_total: list[int]

    def token_counts(self, i: int, output_tokens: int | None = None) -> AnyresTokenCounts:
        return AnyresTokenCounts(
            input_tokens=self.input_tokens[i],
            output_tokens=output_tokens,
            visual_tokens_kept=self.visual_tokens_kept[i],
            visual_tokens_total=self.visual_tokens_total[i],
            newline_tokens_kept=self.newline_tokens_kept[i],
            newline_tokens_total=self.newline_tokens_total[i],
        )


@dataclass
class KeptImage:
    """What survives of one image: its packed positions (visual tokens and newlines), and their features."""

    positions: torch.Tensor
    features: torch.Tensor
    layout: AnyresLayout
    visual_tokens: int
    newline_tokens: int


class LlavaNextFoPru(LlavaFoPru):
    """LLaVA-NeXT with FoPru; the simple variant, used for loglikelihood and multiple-choice (``--force_simple``)."""

    model_name = "llava_next_fopru"

    model_type = "llava_next"
    model_class = LlavaNextForConditionalGeneration
    example_checkpoint = "llava-hf/llava-v1.6-mistral-7b-hf"

    # ----- the vision side -----------------------------------------------------------------------------------------

    def num_views(self, image_size: torch.Tensor) -> int:
        """Tower views of one image (the base view plus its crops), as ``get_image_features`` counts them."""
        config = self.model.config
        return image_size_to_num_patches(image_size, config.image_grid_pinpoints, config.vision_config.image_size)

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
        self, pixel_values: torch.Tensor, image_sizes: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Packed features per image (packed tokens, hidden) and, when the strategy needs it, the significance of
        each of its tower views (views, tokens_per_view).

        The tower runs once over every view of every image, so one capture yields one row per view, each from that
        view's own attention map.
        """
        needs_significance = self.pruning.strategy in ("rank", "row")
        with self._significance_capture() if needs_significance else nullcontext() as capture:
            features = self.model.get_image_features(
                pixel_values=pixel_values, image_sizes=image_sizes, return_dict=True
            ).pooler_output
        if not needs_significance:
            return list(features), None
        views_per_image = [self.num_views(size) for size in image_sizes]
        return list(features), list(capture.significance.split(views_per_image))

    def keep_image_tokens(
        self,
        features: torch.Tensor,
        significance: torch.Tensor | None,
        image_size: torch.Tensor,
        doc_key: str,
        image_index: int,
    ) -> KeptImage:
        """Select each view of one image on its own grid, then apply the newline rule (see the module docstring)."""
        layout = self.layout(image_size)
        scores = significance.flatten() if significance is not None else None
        # Views draw their own random subsets: view v of the doc's image i is seeded as "image" 2 * i + v.
        base_kept, mosaic_kept = [
            self.select_image_tokens(
                scores[view.sources.to(scores.device)] if scores is not None else None,
                view.grid,
                doc_key,
                2 * image_index + view_index,
            )
            for view_index, view in enumerate(layout.views)
        ]
        positions, newlines = layout.kept_positions(base_kept, mosaic_kept)
        return KeptImage(
            positions=positions,
            features=features[positions.to(features.device)],
            layout=layout,
            visual_tokens=base_kept.numel() + mosaic_kept.numel(),
            newline_tokens=newlines,
        )

    # ----- one batch -----------------------------------------------------------------------------------------------

    def prepare(self, prompts: list[Prompt], continuations: list[str] | None = None) -> AnyresPreparedBatch:
        texts = [
            self.processor.apply_chat_template(p.messages, add_generation_prompt=True, tokenize=False) for p in prompts
        ]
        images = [image for p in prompts for image in p.images]
        encoded = self.processor(images=images or None, text=texts, padding=True, return_tensors="pt")
        rows = unpad(encoded["input_ids"], encoded["attention_mask"])

        kept_images: list[list[KeptImage]] = [[] for _ in prompts]
        if images:
            pixel_values = encoded["pixel_values"].to(self.device, self.model.dtype)
            image_sizes = encoded["image_sizes"]
            features, significance = self.encode_images(pixel_values, image_sizes.to(self.device))
            image_index = 0
            for prompt, kept in zip(prompts, kept_images, strict=True):
                for local_index in range(len(prompt.images)):
                    scores = significance[image_index] if significance is not None else None
                    size = image_sizes[image_index]
                    kept.append(
                        self.keep_image_tokens(features[image_index], scores, size, prompt.doc_key, local_index)
                    )
                    image_index += 1

        positions: list[torch.Tensor] = []  # each surviving token's position in the unpruned sequence
        for i, kept in enumerate(kept_images):
            survivors = surviving_positions(
                rows[i],
                self.model.config.image_token_id,
                [image.positions for image in kept],
                [image.layout.num_packed_tokens for image in kept],
            )
            rows[i] = rows[i][survivors]
            positions.append(survivors)
        kept_features = [image.features for kept in kept_images for image in kept]
        inputs = self._model_inputs(rows, positions, kept_features, continuations)

        def per_sample(count: Callable[[KeptImage], int]) -> list[int]:
            return [sum(count(image) for image in kept) for kept in kept_images]

        return AnyresPreparedBatch(
            inputs=inputs,
            visual_tokens_kept=per_sample(lambda image: image.visual_tokens),
            visual_tokens_total=per_sample(lambda image: image.layout.num_visual_tokens),
            input_tokens=[row.numel() for row in rows],
            newline_tokens_kept=per_sample(lambda image: image.newline_tokens),
            newline_tokens_total=per_sample(lambda image: image.layout.num_newlines),
        )


class LlavaNextFoPruChat(LlavaNextFoPru):
    """The chat variant lmms-eval picks by default: prompts come from the task's messages, as for ``llava_hf``."""

    is_simple = False

"""``qwen2_vl_fopru`` and ``qwen2_5_vl_fopru``: Qwen2-VL and Qwen2.5-VL with FoPru pruning.

Data path per batch: images resized as qwen-vl-utils resizes them -> processor (one ``<|image_pad|>`` per LLM token,
i.e. per 2 x 2 patch group) -> packed vision tower, with significance captured from one full-attention block, per
image, pooled per merge group -> per-image selection on the merged grid -> placeholders of pruned tokens dropped
from ``input_ids`` -> the HF model runs on the kept image features (``mm_encoder_outputs``) with explicit M-RoPE
``position_ids``, so its own embedding merge and generation loop stay untouched.

Positions (transformers 5.23). Each kept token, text or visual, keeps the (t, h, w) position it has in the unpruned
sequence, as the model's own ``get_rope_index`` computes it there (``fopru_eval/mrope.py``). The ids go to ``generate``
in the (4, batch, length) layout ``generate`` itself builds for Qwen-VL (a text row, then t, h, w). Given
``position_ids``, ``generate`` never calls ``get_rope_index`` and never reads the model's cached ``rope_deltas``: each
step appends ``last + 1`` on every row, and the forward uses the ids as given. The last prompt token is text (equal on
all three axes, above every earlier position), so ``last + 1`` is exactly the unpruned sequence's next position: what
``rope_deltas`` gives for the unpruned prompt, and what a ``rope_deltas`` for the pruned prompt would have to give
(larger by the number of pruned tokens).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import torch
from lmms_eval.api.instance import GenerationResult
from PIL import Image
from transformers import (
    AutoProcessor,
    PreTrainedModel,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLForConditionalGeneration,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.vision_utils import get_vision_window_index

from fopru_eval.mrope import generation_position_ids
from fopru_eval.packed_capture import PackedSignificanceCapture
from fopru_eval.packed_significance import undo_window_order
from fopru_eval.sequence import kept_token_mask, left_pad, unpad
from fopru_model_adapters.base import FoPruLMM, PreparedBatch, Prompt

# qwen-vl-utils' own pixel limits for an image given without min_pixels/max_pixels: 4 to 16384 tokens of 28 x 28.
QWEN_VL_UTILS_PIXEL_LIMITS = (4 * 28 * 28, 16384 * 28 * 28)


class QwenVLFoPru(FoPruLMM):
    """What both Qwen-VL families share; a family subclass sets the class attributes below. The simple variants are
    used for loglikelihood and multiple-choice (``--force_simple``)."""

    model_type: str
    model_class: type[PreTrainedModel]
    example_checkpoint: str
    # The pixel limits of lmms-eval's adapter for the family, so results compare with it out of the box.
    default_min_pixels: int
    default_max_pixels: int
    # Answers are finished as lmms-eval's adapter for the family finishes them (``_finish_answer``).
    apply_until = True
    ignored_until: tuple[str, ...] = ()
    strip_answers = False
    # lmms-eval's Qwen adapters default to 128 new tokens when a task sets none.
    default_max_new_tokens = 128

    def __init__(
        self,
        pretrained: str,
        min_pixels: int | str | None = None,
        max_pixels: int | str | None = None,
        **kwargs: Any,
    ) -> None:
        self.min_pixels = _pixels("min_pixels", min_pixels, self.default_min_pixels)
        self.max_pixels = _pixels("max_pixels", max_pixels, self.default_max_pixels)
        if self.min_pixels > self.max_pixels:
            raise ValueError(
                f"{self.model_name}: min_pixels={self.min_pixels} is above max_pixels={self.max_pixels}; "
                "accepted values: integers with 1 <= min_pixels <= max_pixels"
            )
        super().__init__(pretrained, **kwargs)

    # ----- loading -------------------------------------------------------------------------------------------------

    def load(self, pretrained: str, **kwargs: Any) -> None:
        revision, trust_remote_code = kwargs["revision"], kwargs["trust_remote_code"]
        self.model = self.model_class.from_pretrained(pretrained, **kwargs).eval()
        # As in lmms-eval's Qwen adapters, the processor resizes every image into [min_pixels, max_pixels]. (They pass
        # min_pixels/max_pixels, which transformers 5.23 turns into this size on every call, with a deprecation
        # warning.)
        self.processor = AutoProcessor.from_pretrained(
            pretrained,
            revision=revision,
            trust_remote_code=trust_remote_code,
            size={"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
        )
        self.tokenizer = self.processor.tokenizer
        self._config = self.model.config

        tower = self.model.model.visual
        self.merge_size = tower.spatial_merge_size
        self.attention = tower.blocks[self.significance_block(self.model.config.vision_config)].attn

    @staticmethod
    def significance_block(vision_config: Any) -> int:
        """Index of the vision block whose attention map gives the significance."""
        raise NotImplementedError

    def merge_group_order(self, grid_thw: torch.Tensor) -> torch.Tensor | None:
        """The order in which the tower's blocks see each image's merge groups, if not raster order."""
        return None

    # ----- vision tower and significance ---------------------------------------------------------------------------

    def _significance_capture(self) -> PackedSignificanceCapture:
        return PackedSignificanceCapture(
            self.attention,
            num_heads=self.attention.num_heads,
            scale=self.attention.scaling,
            mode=self.pruning.significance,
            merge_unit=self.merge_size**2,
        )

    def encode_images(
        self, pixel_values: torch.Tensor, grid_thw: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Features per image (LLM tokens, hidden) and, when the strategy needs it, each token's significance, both
        in raster order of the image's merged grid."""
        needs_significance = self.pruning.strategy in ("rank", "row")
        with self._significance_capture() if needs_significance else nullcontext() as capture:
            features = self.model.get_image_features(
                pixel_values=pixel_values, image_grid_thw=grid_thw, return_dict=True
            ).pooler_output
        if not needs_significance:
            return list(features), None
        significance = capture.significance
        order = self.merge_group_order(grid_thw)
        if order is not None:
            significance = undo_window_order(significance, order)
        return list(features), significance

    # ----- prompts -> pruned model inputs --------------------------------------------------------------------------

    def presize_limits(self) -> tuple[int, int]:
        """Pixel limits of the qwen-vl-utils resize that precedes the processor (``_presize``)."""
        return self.min_pixels, self.max_pixels

    def _presize(self, image: Image.Image) -> Image.Image:
        """Resize as qwen-vl-utils does before the processor sees the image (PIL bicubic to multiples of 28 pixels
        within the pixel limits), as lmms-eval's Qwen adapters and Qwen's model cards do. The processor's own
        (torchvision) resize would give slightly different pixels."""
        factor = self.processor.image_processor.patch_size * self.processor.image_processor.merge_size
        height, width = qwen_vl_utils_smart_resize(image.height, image.width, factor, *self.presize_limits())
        return image.resize((width, height), Image.Resampling.BICUBIC)

    def prepare(self, prompts: list[Prompt], continuations: list[str] | None = None) -> PreparedBatch:
        texts = [
            self.processor.apply_chat_template(p.messages, add_generation_prompt=True, tokenize=False) for p in prompts
        ]
        images = [self._presize(image) for p in prompts for image in p.images]
        encoded = self.processor(images=images or None, text=texts, padding=True, return_tensors="pt")
        rows = unpad(encoded["input_ids"], encoded["attention_mask"])
        token_types = unpad(encoded["mm_token_type_ids"], encoded["attention_mask"])
        if continuations is not None:
            for i, continuation in enumerate(continuations):
                tail = torch.tensor(self.tok_encode(continuation), dtype=rows[i].dtype)
                rows[i] = torch.cat([rows[i], tail])
                token_types[i] = torch.cat([token_types[i], torch.zeros_like(tail, dtype=token_types[i].dtype)])
        grids = encoded.get("image_grid_thw")
        features, significance = [], None
        if images:
            pixel_values = encoded["pixel_values"].to(self.device, self.model.dtype)
            features, significance = self.encode_images(pixel_values, grids.to(self.device))

        kept_features, kept_counts, total_counts, positions = [], [], [], []
        first_image = 0
        for row_index, prompt in enumerate(prompts):
            row_images = range(first_image, first_image + len(prompt.images))
            first_image += len(prompt.images)
            row_grids = grids[row_images.start : row_images.stop] if prompt.images else None
            # M-RoPE positions of the unpruned sequence, by the model's own rule; kept tokens keep theirs.
            unpruned_positions, _ = self.model.model.get_rope_index(
                rows[row_index][None], mm_token_type_ids=token_types[row_index][None], image_grid_thw=row_grids
            )
            kept, sizes = [], []
            for local_index, image_index in enumerate(row_images):
                _, height, width = grids[image_index].tolist()  # an image is one frame: t = 1
                grid = (height // self.merge_size, width // self.merge_size)
                scores = significance[image_index] if significance is not None else None
                kept.append(self.select_image_tokens(scores, grid, prompt.doc_key, local_index))
                sizes.append(grid[0] * grid[1])
                kept_features.append(features[image_index][kept[-1]])
            keep = kept_token_mask(rows[row_index], self.model.config.image_token_id, kept, sizes)
            rows[row_index] = rows[row_index][keep]
            positions.append(unpruned_positions[:, 0, keep])
            kept_counts.append(sum(k.numel() for k in kept))
            total_counts.append(sum(sizes))

        input_ids, attention_mask = left_pad(rows, self.tokenizer.pad_token_id)
        inputs: dict[str, Any] = {
            "input_ids": input_ids.to(self.device),
            "attention_mask": attention_mask.to(self.device),
            "position_ids": generation_position_ids(positions).to(self.device),
        }
        if kept_features:
            inputs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=kept_features)}
        return PreparedBatch(inputs, kept_counts, total_counts, [row.numel() for row in rows])

    # ----- matching lmms-eval's Qwen adapters ----------------------------------------------------------------------

    def _prompt_from_visuals(self, ctx: str, *args: Any) -> Prompt:
        # Images go in as their own content items; a LLaVA-style "<image>" marker in a task's text is dropped, as
        # lmms-eval's Qwen adapters drop it.
        return super()._prompt_from_visuals(ctx.replace("<image>", ""), *args)

    def _generation_config(self, gen_kwargs: dict[str, Any]) -> dict[str, Any]:
        return super()._generation_config({"max_new_tokens": self.default_max_new_tokens, **gen_kwargs})

    def _generate(self, prompts: list[Prompt], gen_kwargs: dict[str, Any]) -> list[GenerationResult]:
        answers = super()._generate(prompts, gen_kwargs)
        for answer in answers:
            answer.text = self._finish_answer(answer.text, gen_kwargs)
        return answers

    def _finish_answer(self, text: str, gen_kwargs: dict[str, Any]) -> str:
        """Cut the answer at the task's ``until`` strings (generation itself stops at EOS) and strip it, as far as
        lmms-eval's adapter for the family does."""
        if self.apply_until:
            until = gen_kwargs.get("until") or []
            for stop in [until] if isinstance(until, str) else until:
                if stop and stop not in self.ignored_until:
                    text = text.split(stop)[0]
        return text.strip() if self.strip_answers else text


class Qwen2VLFoPru(QwenVLFoPru):
    """Qwen2-VL (``Qwen2VLForConditionalGeneration``): significance from the last vision block, the one whose output
    the merger reads (every Qwen2-VL block attends over the whole image)."""

    model_name = "qwen2_vl_fopru"
    model_type = "qwen2_vl"
    model_class = Qwen2VLForConditionalGeneration
    example_checkpoint = "Qwen/Qwen2-VL-7B-Instruct"
    default_min_pixels = 3136
    default_max_pixels = 602112
    # lmms-eval's qwen2_vl cuts at every until string and strips the answer.
    strip_answers = True

    @staticmethod
    def significance_block(vision_config: Any) -> int:
        return vision_config.depth - 1


class Qwen2VLFoPruChat(Qwen2VLFoPru):
    """The chat variant lmms-eval picks by default: prompts come from the task's messages. (lmms-eval's own
    qwen2_vl has only a simple class; answers are finished as there.)"""

    is_simple = False


class Qwen2_5_VLFoPru(QwenVLFoPru):
    """Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): significance from the last full-attention block
    (``fullatt_block_indexes``; the other blocks attend within windows, so their maps are not whole-image maps)."""

    model_name = "qwen2_5_vl_fopru"
    model_type = "qwen2_5_vl"
    model_class = Qwen2_5_VLForConditionalGeneration
    example_checkpoint = "Qwen/Qwen2.5-VL-7B-Instruct"
    default_min_pixels = 256 * 28 * 28
    default_max_pixels = 1605632
    # lmms-eval's simple qwen2_5_vl cuts at until strings except "\n\n" (Qwen2.5-VL answers contain blank lines).
    ignored_until = ("\n\n",)

    def check_config(self, config: Any, pretrained: str) -> None:
        if not config.vision_config.fullatt_block_indexes:
            raise ValueError(
                f"{self.model_name}: pretrained={pretrained} has no full-attention vision block "
                "(vision_config.fullatt_block_indexes is empty); FoPru needs one whole-image attention map"
            )

    @staticmethod
    def significance_block(vision_config: Any) -> int:
        return max(vision_config.fullatt_block_indexes)

    def merge_group_order(self, grid_thw: torch.Tensor) -> torch.Tensor:
        # The window permutation the tower applies to merge groups before its blocks (and undoes after the merger).
        vision = self.model.config.vision_config
        window_index, _ = get_vision_window_index(
            grid_thw, vision.spatial_merge_size, vision.window_size, vision.patch_size
        )
        return window_index


class Qwen2_5_VLFoPruChat(Qwen2_5_VLFoPru):
    """The chat variant lmms-eval picks by default: prompts come from the task's messages, as for its chat
    qwen2_5_vl, which applies no until strings and hands images to qwen-vl-utils without pixel limits (so its
    defaults apply there, and min_pixels/max_pixels only in the processor)."""

    is_simple = False
    apply_until = False

    def presize_limits(self) -> tuple[int, int]:
        return QWEN_VL_UTILS_PIXEL_LIMITS


def qwen_vl_utils_smart_resize(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """The size qwen-vl-utils 0.0.14 resizes an image to (``smart_resize``): both sides multiples of ``factor``,
    the area within [min_pixels, max_pixels], the aspect ratio kept as closely as possible. Transformers' own
    ``smart_resize`` differs at the edges (sides shorter than factor / 2), so this one is copied."""
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


def _pixels(name: str, value: int | str | None, default: int) -> int:
    if value is None:
        return default
    try:
        number = int(str(value))
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"{name}={value!r} is not supported; accepted values: integers >= 1")
    return number

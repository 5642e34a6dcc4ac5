"""``qwen2_vl_fopru`` and ``qwen2_5_vl_fopru``: Qwen2-VL and Qwen2.5-VL with FoPru pruning; the families (packed
tower, merged grids, M-RoPE positions) are in ``fopru_eval/families/qwen_vl.py``. What is here matches lmms-eval's own
Qwen adapters, so that ``strategy=none`` answers as they do with the same model args: their pixel limits, their
default dtype (bfloat16 for Qwen2.5-VL), the JPEG round trip their simple classes put every image through
(``lossless_images=true`` skips it), their prompts and how they finish answers.
"""

from __future__ import annotations

import base64
from io import BytesIO
from typing import Any

from lmms_eval.api.instance import GenerationResult
from lmms_eval.models.model_utils.media_encoder import encode_image_to_data_url
from PIL import Image
from qwen_vl_utils.vision_process import to_rgb as qwen_vl_utils_to_rgb

from fopru_eval.families.qwen_vl import QWEN_VL_UTILS_PIXEL_LIMITS, Qwen2_5_VL, Qwen2VL
from fopru_model_adapters.args import boolean, positive_int
from fopru_model_adapters.base import FoPruLMM, Prompt


class QwenVLFoPru(FoPruLMM):
    """What both Qwen-VL adapters share; each sets the class attributes below. The simple variants are used for
    loglikelihood and multiple-choice (``--force_simple``)."""

    # The pixel limits of lmms-eval's adapter for the family, so results compare with it out of the box.
    default_min_pixels: int
    default_max_pixels: int
    # Answers are finished as lmms-eval's adapter for the family finishes them (``_finish_answer``).
    apply_until = True
    ignored_until: tuple[str, ...] = ()
    strip_answers = False
    # lmms-eval's Qwen adapters default to 128 new tokens when a task sets none.
    default_max_new_tokens = 128
    # lmms-eval's simple Qwen adapters hand every image to qwen-vl-utils as a JPEG (quality 85) data URL.
    sends_jpeg = True

    def __init__(
        self,
        pretrained: str,
        min_pixels: int | str | None = None,
        max_pixels: int | str | None = None,
        lossless_images: bool | str = False,
        **kwargs: Any,
    ) -> None:
        self.lossless_images = boolean("lossless_images", lossless_images)
        self.min_pixels = _pixels("min_pixels", min_pixels, self.default_min_pixels)
        self.max_pixels = _pixels("max_pixels", max_pixels, self.default_max_pixels)
        if self.min_pixels > self.max_pixels:
            raise ValueError(
                f"{self.model_name}: min_pixels={self.min_pixels} is above max_pixels={self.max_pixels}; "
                "accepted values: integers with 1 <= min_pixels <= max_pixels"
            )
        super().__init__(pretrained, **kwargs)

    def processor_kwargs(self) -> dict[str, Any]:
        # Passed as lmms-eval's Qwen adapters pass them. These keyword arguments win over whatever the checkpoint's
        # preprocessor_config.json holds: the hub's Qwen2(-.5)-VL files carry top-level min_pixels / max_pixels
        # (3136 .. 12845056) and no ``size``, and those would override a ``size=`` argument.
        return {"min_pixels": self.min_pixels, "max_pixels": self.max_pixels}

    def family_kwargs(self) -> dict[str, Any]:
        return {"presize_limits": self.presize_limits()}

    def presize_limits(self) -> tuple[int, int]:
        """Pixel limits of the qwen-vl-utils resize that precedes the processor."""
        return self.min_pixels, self.max_pixels

    # ----- matching lmms-eval's Qwen adapters ----------------------------------------------------------------------

    def _prompt_from_visuals(self, ctx: str, *args: Any) -> Prompt:
        # Images go in as their own content items; a LLaVA-style "<image>" marker in a task's text is dropped, as
        # lmms-eval's Qwen adapters drop it.
        return super()._prompt_from_visuals(ctx.replace("<image>", ""), *args)

    def image_as_sent(self, image: Image.Image) -> Image.Image:
        """As lmms-eval's adapter for the family hands an image to qwen-vl-utils: through a JPEG (quality 85) round
        trip, RGB-converted by lmms-eval's encoder, unless ``lossless_images`` or the adapter sends it as it is; then
        converted to RGB by qwen-vl-utils' own ``to_rgb`` (white under transparency, for RGBA only)."""
        if self.sends_jpeg and not self.lossless_images:
            return jpeg_round_trip(image)
        return qwen_vl_utils_to_rgb(image)

    def generation_kwargs(self, gen_kwargs: dict[str, Any]) -> dict[str, Any]:
        return super().generation_kwargs({"max_new_tokens": self.default_max_new_tokens, **gen_kwargs})

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
    the merger reads (every Qwen2-VL block attends over the whole image). A simple class only, as lmms-eval's own
    qwen2_vl: lmms-eval then builds every request as for that one (the context and the doc's images, not the task's
    messages, which can place images elsewhere, as mmmu_val's do)."""

    model_name = "qwen2_vl_fopru"
    lmms_model = "qwen2_vl"
    family_class = Qwen2VL
    default_min_pixels = 3136
    default_max_pixels = 602112
    # lmms-eval's qwen2_vl cuts at every until string and strips the answer.
    strip_answers = True


class Qwen2_5_VLFoPru(QwenVLFoPru):
    """Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): significance from the last full-attention block
    (``fullatt_block_indexes``; the other blocks attend within windows, so their maps are not whole-image maps)."""

    model_name = "qwen2_5_vl_fopru"
    lmms_model = "qwen2_5_vl"
    family_class = Qwen2_5_VL
    # lmms-eval's qwen2_5_vl loads bfloat16 whatever the checkpoint says.
    default_dtype = "bfloat16"
    default_min_pixels = 256 * 28 * 28
    default_max_pixels = 1605632
    # lmms-eval's simple qwen2_5_vl cuts at until strings except "\n\n" (Qwen2.5-VL answers contain blank lines).
    ignored_until = ("\n\n",)


class Qwen2_5_VLFoPruChat(Qwen2_5_VLFoPru):
    """The chat variant lmms-eval picks by default: prompts come from the task's messages, as for its chat
    qwen2_5_vl, which applies no until strings and hands images to qwen-vl-utils without pixel limits (so its
    defaults apply there, and min_pixels/max_pixels only in the processor)."""

    is_simple = False
    apply_until = False
    # Its chat class hands the PIL images to qwen-vl-utils as they are.
    sends_jpeg = False

    def presize_limits(self) -> tuple[int, int]:
        return QWEN_VL_UTILS_PIXEL_LIMITS


def jpeg_round_trip(image: Image.Image) -> Image.Image:
    """What lmms-eval's simple Qwen adapters do to an image: encode it with lmms-eval's own encoder as an RGB JPEG of
    quality 85, and decode it as qwen-vl-utils decodes a data URL."""
    url = encode_image_to_data_url(image, image_format="JPEG", mime_type="image/jpeg", convert_rgb=True, quality=85)
    with BytesIO(base64.b64decode(url.split("base64,", 1)[1])) as data:
        return Image.open(data).convert("RGB")


def _pixels(name: str, value: int | str | None, default: int) -> int:
    return default if value is None else positive_int(name, value)

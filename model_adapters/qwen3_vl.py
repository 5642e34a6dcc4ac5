"""``qwen3_vl_fopru``: Qwen3-VL with FoPru pruning; the family (16-pixel patches, DeepStack) is in
``fopru_eval/families/qwen3_vl.py``. What is here matches lmms-eval's own ``qwen3_vl`` adapter, so that
``strategy=none`` answers as it does with the same model args: its pixel limits, bfloat16, its system prompt, images
handed to qwen-vl-utils as they are (no JPEG round trip) and resized there only (its processor runs with
``do_resize=False``), and how it finishes answers.
"""

from __future__ import annotations

from typing import Any

from fopru_eval.families.qwen3_vl import QWEN3_VL_UTILS_PIXEL_LIMITS, Qwen3VL
from fopru_model_adapters.base import Prompt
from fopru_model_adapters.qwen_vl import QwenVLFoPru

# lmms-eval's qwen3_vl sends this system turn first in every prompt (Qwen3-VL's chat template adds none itself).
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


class Qwen3VLFoPru(QwenVLFoPru):
    """Qwen3-VL (``Qwen3VLForConditionalGeneration``): significance from the last vision block (every block attends
    over the whole image); the DeepStack features injected into the first LLM layers are pruned with the same kept
    positions as the main features. The simple variant, used for loglikelihood and multiple-choice
    (``--force_simple``; lmms-eval's own qwen3_vl has no loglikelihood)."""

    model_name = "qwen3_vl_fopru"
    family_class = Qwen3VL
    # lmms-eval's qwen3_vl loads bfloat16 whatever the checkpoint says.
    default_dtype = "bfloat16"
    default_min_pixels = 256 * 28 * 28
    default_max_pixels = 1605632
    # Its simple class cuts at until strings except "\n\n", and strips nothing.
    ignored_until = ("\n\n",)
    # It hands PIL images to qwen-vl-utils as they are.
    sends_jpeg = False

    def __init__(self, pretrained: str, system_prompt: str = DEFAULT_SYSTEM_PROMPT, **kwargs: Any) -> None:
        self.system_prompt = system_prompt
        super().__init__(pretrained, **kwargs)

    def processor_kwargs(self) -> dict[str, Any]:
        # The qwen-vl-utils resize (``Qwen3VL.prepare_image``) is the only one, as in lmms-eval's qwen3_vl.
        return {"do_resize": False}

    def _prompt_from_visuals(self, ctx: str, *args: Any) -> Prompt:
        return self._with_system_turn(super()._prompt_from_visuals(ctx, *args))

    def _prompt_from_messages(self, messages: Any, *args: Any) -> Prompt:
        return self._with_system_turn(super()._prompt_from_messages(messages, *args))

    def _with_system_turn(self, prompt: Prompt) -> Prompt:
        prompt.messages.insert(0, {"role": "system", "content": self.system_prompt})
        return prompt


class Qwen3VLFoPruChat(Qwen3VLFoPru):
    """The chat variant lmms-eval picks by default: prompts come from the task's messages, as for its chat qwen3_vl,
    which applies no until strings and hands images to qwen-vl-utils without pixel limits (so qwen-vl-utils' defaults
    for 32-pixel factors apply, and min_pixels/max_pixels change nothing for images there, nor here)."""

    is_simple = False
    apply_until = False

    def presize_limits(self) -> tuple[int, int]:
        return QWEN3_VL_UTILS_PIXEL_LIMITS

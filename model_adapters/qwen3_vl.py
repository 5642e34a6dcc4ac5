"""``qwen3_vl_fopru``: Qwen3-VL with FoPru pruning; the family (16-pixel patches, DeepStack) is in
``fopru_eval/families/qwen3_vl.py``. What is here matches lmms-eval's own ``qwen3_vl`` adapter, so that
``strategy=none`` answers as it does with the same model args: its pixel limits, bfloat16, its system prompt, images
handed to qwen-vl-utils as they are (no JPEG round trip) and resized there only (its processor runs with
``do_resize=False``), and how it finishes answers. Video files (lmms-eval's video tasks give paths) are read as there:
through qwen-vl-utils with its video kwargs (``max_num_frames``, ``fps``, ``total_pixels`` and the pixel limits), the
frames' metadata handed to the processor with them, so the prompt's timestamps are the file's
(``model_adapters/video.py``).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from fopru_eval.families.qwen3_vl import QWEN3_VL_UTILS_PIXEL_LIMITS, Qwen3VL
from fopru_model_adapters.args import positive_int, positive_number
from fopru_model_adapters.base import Prompt
from fopru_model_adapters.qwen_vl import QwenVLFoPru
from fopru_model_adapters.requests import VideoReader
from fopru_model_adapters.video import read_qwen_vl_video

# lmms-eval's qwen3_vl sends this system turn first in every prompt (Qwen3-VL's chat template adds none itself).
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
# The patch size lmms-eval's qwen3_vl gives qwen-vl-utils (``image_patch_size=16``): frames resize to multiples of 32.
QWEN_VL_UTILS_PATCH_SIZE = 16


class Qwen3VLFoPru(QwenVLFoPru):
    """Qwen3-VL (``Qwen3VLForConditionalGeneration``): significance from the last vision block (every block attends
    over the whole image); the DeepStack features injected into the first LLM layers are pruned with the same kept
    positions as the main features. The simple variant, used for loglikelihood and multiple-choice
    (``--force_simple``; lmms-eval's own qwen3_vl has no loglikelihood)."""

    model_name = "qwen3_vl_fopru"
    lmms_model = "qwen3_vl"
    family_class = Qwen3VL
    # lmms-eval's qwen3_vl loads bfloat16 whatever the checkpoint says.
    default_dtype = "bfloat16"
    default_min_pixels = 256 * 28 * 28
    default_max_pixels = 1605632
    # Its simple class cuts at until strings except "\n\n", and strips nothing.
    ignored_until = ("\n\n",)
    # It hands PIL images to qwen-vl-utils as they are.
    sends_jpeg = False

    def __init__(
        self,
        pretrained: str,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        max_num_frames: int | str = 32,
        fps: float | str | None = None,
        total_pixels: int | str | None = None,
        **kwargs: Any,
    ) -> None:
        self.system_prompt = system_prompt
        self.max_num_frames = _frame_count("max_num_frames", max_num_frames)
        self.fps = None if fps is None else positive_number("fps", fps)
        self.total_pixels = None if total_pixels is None else positive_int("total_pixels", total_pixels)
        super().__init__(pretrained, **kwargs)

    def video_kwargs(self) -> dict[str, Any]:
        """What lmms-eval's qwen3_vl (``_build_video_kwargs``) puts in every video item for qwen-vl-utils: the frame
        count (``nframes``), or a rate (``fps``, 2 by default there when ``total_pixels`` is given) up to
        ``max_frames``; and the per-frame pixel limits, or a pixel budget for the whole video."""
        kwargs: dict[str, Any] = {"min_pixels": self.min_pixels}
        if self.fps is not None:
            kwargs |= {"fps": self.fps, "max_frames": self.max_num_frames}
        elif self.total_pixels is not None:
            kwargs["max_frames"] = self.max_num_frames
        else:
            kwargs["nframes"] = self.max_num_frames
        if self.total_pixels is not None:
            kwargs["total_pixels"] = self.total_pixels
        else:
            kwargs["max_pixels"] = self.max_pixels
        return kwargs

    def video_reader(self) -> VideoReader:
        return partial(read_qwen_vl_video, video_kwargs=self.video_kwargs(), image_patch_size=QWEN_VL_UTILS_PATCH_SIZE)

    def processor_kwargs(self) -> dict[str, Any]:
        # The qwen-vl-utils resize (``Qwen3VL.prepare_image``) is the only one for images, as in lmms-eval's qwen3_vl,
        # which loads its processor with these pixel limits too.
        return {**super().processor_kwargs(), "do_resize": False}

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


def _frame_count(name: str, value: Any) -> int:
    """``max_num_frames``: qwen-vl-utils samples frames in pairs (``nframes`` rounds to an even number), so 1 would
    sample none."""
    try:
        number = positive_int(name, value)
    except ValueError:
        number = 0
    if number < 2:
        raise ValueError(f"{name}={value!r} is not supported; accepted values: integers >= 2 (frames go in pairs)")
    return number

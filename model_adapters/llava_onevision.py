"""``llava_onevision_fopru``: LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``) with FoPru pruning; the
family (SigLIP tower, anyres-max views, newline rule, budgets per view) is ``fopru_eval/families/llava_onevision.py``.

lmms-eval's own ``llava_onevision`` adapter runs the original LLaVA code base, not transformers; its ``llava_hf`` runs
OneVision's Hugging Face checkpoints, and prompts here are built as that one builds them. Videos (a task's file paths)
are read as ``llava_hf`` reads them: ``max_frames_num`` frames (32 by default, as there) spaced evenly over the video
(``model_adapters/video.py``)."""

from __future__ import annotations

from functools import partial
from typing import Any

from fopru_eval.families.llava_onevision import LlavaOnevision
from fopru_model_adapters.args import positive_int
from fopru_model_adapters.llava import LlavaHfPrompts
from fopru_model_adapters.requests import VideoReader
from fopru_model_adapters.video import read_uniform_frames


class LlavaOnevisionFoPru(LlavaHfPrompts):
    """LLaVA-OneVision with FoPru; the simple variant, for loglikelihood and multiple-choice (``--force_simple``)."""

    model_name = "llava_onevision_fopru"
    family_class = LlavaOnevision

    def __init__(self, pretrained: str, max_frames_num: int | str = 32, **kwargs: Any) -> None:
        self.max_frames_num = positive_int("max_frames_num", max_frames_num)
        super().__init__(pretrained, **kwargs)

    def video_reader(self) -> VideoReader:
        return partial(read_uniform_frames, count=self.max_frames_num)


class LlavaOnevisionFoPruChat(LlavaOnevisionFoPru):
    """The chat variant lmms-eval picks by default: prompts come from the task's messages, as for ``llava_hf``."""

    is_simple = False

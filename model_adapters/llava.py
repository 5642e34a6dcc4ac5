"""``llava_fopru``: LLaVA-1.5 (``LlavaForConditionalGeneration``) with FoPru pruning; the family is
``fopru_eval/families/llava.py``."""

from __future__ import annotations

from fopru_eval.families.llava import Llava
from fopru_model_adapters.base import FoPruLMM


class LlavaFoPru(FoPruLMM):
    """LLaVA-1.5 with FoPru; the simple variant, used for loglikelihood and multiple-choice (``--force_simple``)."""

    model_name = "llava_fopru"
    family_class = Llava


class LlavaFoPruChat(LlavaFoPru):
    """The chat variant lmms-eval picks by default: prompts come from the task's messages, as for ``llava_hf``."""

    is_simple = False

"""``llava_onevision_fopru``: LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``) with FoPru pruning; the
family (SigLIP tower, anyres-max views, newline rule, budgets per view) is ``fopru_eval/families/llava_onevision.py``.

lmms-eval's own ``llava_onevision`` adapter runs the original LLaVA code base, not transformers; its ``llava_hf`` runs
OneVision's Hugging Face checkpoints, and prompts here are built as that one builds them."""

from __future__ import annotations

from fopru_eval.families.llava_onevision import LlavaOnevision
from fopru_model_adapters.base import FoPruLMM


class LlavaOnevisionFoPru(FoPruLMM):
    """LLaVA-OneVision with FoPru; the simple variant, for loglikelihood and multiple-choice (``--force_simple``)."""

    model_name = "llava_onevision_fopru"
    family_class = LlavaOnevision


class LlavaOnevisionFoPruChat(LlavaOnevisionFoPru):
    """The chat variant lmms-eval picks by default: prompts come from the task's messages, as for ``llava_hf``."""

    is_simple = False

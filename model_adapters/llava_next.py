"""``llava_next_fopru``: LLaVA-NeXT (``LlavaNextForConditionalGeneration``) with FoPru pruning; the family (anyres
views, newline rule, budgets per view) is ``fopru_eval/families/llava_next.py``."""

from __future__ import annotations

from fopru_eval.families.llava_next import LlavaNext
from fopru_model_adapters.llava import LlavaHfPrompts


class LlavaNextFoPru(LlavaHfPrompts):
    """LLaVA-NeXT with FoPru; the simple variant, used for loglikelihood and multiple-choice (``--force_simple``)."""

    model_name = "llava_next_fopru"
    family_class = LlavaNext


class LlavaNextFoPruChat(LlavaNextFoPru):
    """The chat variant lmms-eval picks by default: prompts come from the task's messages, as for ``llava_hf``."""

    is_simple = False

"""``llava_fopru``: LLaVA-1.5 (``LlavaForConditionalGeneration``) with FoPru pruning; the family is
``fopru_eval/families/llava.py``. ``LlavaHfPrompts`` is what the three LLaVA adapters (1.5, NeXT, OneVision) share
with lmms-eval's ``llava_hf``, which runs all three."""

from __future__ import annotations

from typing import Any

from fopru_eval.families.llava import Llava
from fopru_model_adapters.base import FoPruLMM, Prompt

# lmms-eval's simple llava_hf (models/simple/llava_hf.py, VICUNA_CHAT_TEMPLATE), verbatim: the template it renders a
# prompt with when neither the chat_template model arg nor the tokenizer gives one. That module imports decord at
# import time (an optional extra here), so the string is copied; a test compares it with lmms-eval's.
VICUNA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.index0 == 0 %}A chat between a curious user and an artificial "
    "intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions. USER: "
    "{{ message['content'] }} {% elif message['role'] == 'user' %}USER: {{ message['content'] }} {% else %} "
    "ASSISTANT: {{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


class LlavaHfPrompts(FoPruLMM):
    """The prompts of lmms-eval's ``llava_hf``. Its chat class renders the task's messages with the processor's chat
    template (the base class does the same). Its simple class renders a string: the task's context, after one
    ``<image>`` (or ``<video>``) marker per visual unless the context already holds ``<image>``, as one user turn,
    with the ``chat_template`` model arg, else the *tokenizer's* template, else its Vicuna template. On the hub's
    llava-1.5-7b-hf the template lives only in ``chat_template.json`` (the processor's), so there the simple class
    prompts in the Vicuna format, and so does this one.

    One difference, declared: where that template expects a list of content parts (the processor's template, which a
    tokenizer loaded from a folder that transformers 5 saved also reads from ``chat_template.jinja``), rendering the
    string drops the question and the image markers, and ``llava_hf`` fails on every image request. Here the messages
    are then rendered with the processor's template instead, as the chat class renders them."""

    lmms_model = "llava_hf"

    def _prompt_from_visuals(self, ctx: str, *args: Any) -> Prompt:
        prompt = super()._prompt_from_visuals(ctx, *args)
        if "<image>" not in ctx and (prompt.images or prompt.videos):
            marker = "<image>" if prompt.images else "<video>"
            ctx = f"{' '.join([marker] * (len(prompt.images) or len(prompt.videos)))}\n{ctx}"
        template = self.chat_template or self.tokenizer.chat_template or VICUNA_CHAT_TEMPLATE
        turn = [{"role": "user", "content": ctx}]
        text = self.tokenizer.apply_chat_template(
            turn, chat_template=template, tokenize=False, add_generation_prompt=True
        )
        if ctx in text:
            prompt.text = text
        return prompt


class LlavaFoPru(LlavaHfPrompts):
    """LLaVA-1.5 with FoPru; the simple variant, used for loglikelihood and multiple-choice (``--force_simple``)."""

    model_name = "llava_fopru"
    family_class = Llava


class LlavaFoPruChat(LlavaFoPru):
    """The chat variant lmms-eval picks by default: prompts come from the task's messages, as for ``llava_hf``."""

    is_simple = False

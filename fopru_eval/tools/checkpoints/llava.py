"""Random-weight LLaVA-1.5-style checkpoints built offline from configs, for tests and CPU benchmarks.

The weights are random, so answers mean nothing; what matters is that the data path (processor, CLIP tower,
projector, Llama) is the real one from transformers, and that the checkpoint saves and reloads with no hub access.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
)

from fopru_eval.tools.checkpoints.tokenizers import CORPUS, train_bpe_tokenizer

# The layout of llava-hf/llava-1.5-*-hf's own chat template: "USER: <image>\n{text} ASSISTANT:".
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}"
    "{% endfor %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

# The chat template's words, then the shared ones.
_CORPUS = ["USER: ASSISTANT: A chat between a curious user and an artificial intelligence assistant.", *CORPUS]


@dataclass(frozen=True)
class LlavaSize:
    """The handful of numbers that decide a LLaVA's cost."""

    image_size: int = 48
    patch_size: int = 8
    vision_hidden: int = 32
    vision_layers: int = 3
    vision_heads: int = 4
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    vocab_size: int = 400


TINY = LlavaSize()
# Runs on a 2-core CPU in seconds per sample, with LLaVA-1.5's 24 x 24 = 576 visual tokens per image.
MID = LlavaSize(
    image_size=336,
    patch_size=14,
    vision_hidden=256,
    vision_layers=8,
    vision_heads=8,
    text_hidden=512,
    text_layers=8,
    text_heads=8,
    vocab_size=2000,
)


def build_tokenizer(vocab_size: int, corpus: list[str] = _CORPUS) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained in a second on ``corpus`` (a few strings), with LLaVA's special tokens."""
    return train_bpe_tokenizer(
        vocab_size,
        SPECIAL_TOKENS,
        corpus,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )


def sub_configs(
    size: LlavaSize, tokenizer: PreTrainedTokenizerFast, **text_overrides: Any
) -> tuple[CLIPVisionConfig, LlamaConfig]:
    """The CLIP tower and the Llama LLM of a random LLaVA of ``size`` (any LLaVA family); ``text_overrides`` replace
    or add Llama config values."""
    vision_config = CLIPVisionConfig(
        hidden_size=size.vision_hidden,
        intermediate_size=4 * size.vision_hidden,
        num_hidden_layers=size.vision_layers,
        num_attention_heads=size.vision_heads,
        image_size=size.image_size,
        patch_size=size.patch_size,
        projection_dim=size.vision_hidden,
    )
    text_values: dict[str, Any] = {
        "hidden_size": size.text_hidden,
        "intermediate_size": 3 * size.text_hidden,
        "num_hidden_layers": size.text_layers,
        "num_attention_heads": size.text_heads,
        "num_key_value_heads": size.text_heads,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 4096,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    text_config = LlamaConfig(**{**text_values, **text_overrides})
    return vision_config, text_config


def random_llava_model(
    size: LlavaSize, tokenizer: PreTrainedTokenizerFast, seed: int = 0, **text_overrides: Any
) -> LlavaForConditionalGeneration:
    """A LLaVA-1.5-architecture model of ``size`` with random (seeded) weights, for ``tokenizer``'s vocabulary."""
    vision_config, text_config = sub_configs(size, tokenizer, **text_overrides)
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(size.image_size // size.patch_size) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def llava_processor(tokenizer: PreTrainedTokenizerFast, size: LlavaSize) -> LlavaProcessor:
    """LLaVA-1.5's processor at ``size``'s image and patch size: square views, one placeholder per patch."""
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": size.image_size},
        crop_size={"height": size.image_size, "width": size.image_size},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=size.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token, which "default" drops
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


def build_random_llava(size: LlavaSize = TINY, seed: int = 0) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A LLaVA-1.5-architecture model with random weights and a matching processor."""
    tokenizer = build_tokenizer(size.vocab_size)
    return random_llava_model(size, tokenizer, seed), llava_processor(tokenizer, size)


def save_checkpoint(path: str | Path, model: PreTrainedModel, processor: ProcessorMixin) -> Path:
    """Save a model and its processor under ``path``, loadable with ``from_pretrained``."""
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def save_random_llava(path: str | Path, size: LlavaSize = TINY, seed: int = 0) -> Path:
    """Build a random LLaVA and save model and processor under ``path``."""
    return save_checkpoint(path, *build_random_llava(size, seed))

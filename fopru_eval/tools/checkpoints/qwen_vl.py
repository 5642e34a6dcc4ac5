"""Random-weight Qwen2-VL and Qwen2.5-VL checkpoints built offline from configs, for tests and CPU trials.

The weights are random, so answers mean nothing; what matters is that the data path is the real one from
transformers (processor with dynamic resolution, packed vision tower with 2 x 2 merger, M-RoPE language model) and
that the checkpoint saves and reloads with no hub access. Patch size, merge size, special tokens, chat template and
the tokenizer's eos/pad roles are those of the real Qwen2-VL-Instruct checkpoints; only the widths and depths shrink.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

from fopru_eval.tools.checkpoints.llava import save_checkpoint
from fopru_eval.tools.checkpoints.tokenizers import CORPUS, train_bpe_tokenizer

FAMILIES = ("qwen2_vl", "qwen2_5_vl")

# The chat template of Qwen/Qwen2-VL-7B-Instruct and Qwen/Qwen2.5-VL-7B-Instruct (identical in both), verbatim:
# it adds the default system prompt, and one <|vision_start|><|image_pad|><|vision_end|> per image, which the
# processor expands to one <|image_pad|> per LLM visual token.
QWEN_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# <|endoftext|> is Qwen's bos (config) and pad token, <|im_end|> the Instruct tokenizer's eos.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# The chat template's words, then the shared ones.
_CORPUS = ["system\nYou are a helpful assistant.\nuser\nassistant\n", *CORPUS]


@dataclass(frozen=True)
class QwenVLSize:
    """The handful of numbers that decide a tiny Qwen-VL's cost. Patch 14 and merge 2 are the real ones, so images
    resize exactly as for the real checkpoints (multiples of 28 pixels)."""

    vision_hidden: int = 32
    vision_layers: int = 4
    vision_heads: int = 4
    # Qwen2.5-VL only: which vision blocks attend over the whole image; the others attend within windows of
    # window_size pixels (112 in the real model; 56 here, so small test images still span several windows).
    fullatt_block_indexes: tuple[int, ...] = (1, 2)
    window_size: int = 56
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    # M-RoPE splits each text head's rotary half-dimension (here 64 / 4 / 2 = 8) between t, h and w.
    mrope_section: tuple[int, int, int] = (2, 3, 3)
    vocab_size: int = 400
    # Weights are drawn with this std. Transformers' default, 0.02, leaves a model this small answering the same
    # whatever the image; at 0.2 answers depend on the pixels, so comparisons of answers can tell inputs apart.
    initializer_range: float = 0.2


TINY = QwenVLSize()


def build_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained in a second on a few strings, with Qwen-VL's special tokens and roles."""
    return train_bpe_tokenizer(vocab_size, SPECIAL_TOKENS, _CORPUS, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def build_random_qwen_vl(
    family: str = "qwen2_vl", size: QwenVLSize = TINY, seed: int = 0
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A Qwen2-VL (``family="qwen2_vl"``) or Qwen2.5-VL (``"qwen2_5_vl"``) model with random weights and a matching
    processor."""
    if family not in FAMILIES:
        raise ValueError(f"family={family!r} is not supported; accepted values: {', '.join(FAMILIES)}")
    tokenizer = build_tokenizer(size.vocab_size)
    token_id = tokenizer.convert_tokens_to_ids
    text_config = {
        "hidden_size": size.text_hidden,
        "intermediate_size": 3 * size.text_hidden,
        "num_hidden_layers": size.text_layers,
        "num_attention_heads": size.text_heads,
        "num_key_value_heads": size.text_kv_heads,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": list(size.mrope_section)},
        "bos_token_id": token_id("<|endoftext|>"),
        "eos_token_id": token_id("<|im_end|>"),
        "pad_token_id": token_id("<|endoftext|>"),
        "initializer_range": size.initializer_range,
    }
    special_ids = {
        "image_token_id": token_id("<|image_pad|>"),
        "video_token_id": token_id("<|video_pad|>"),
        "vision_start_token_id": token_id("<|vision_start|>"),
        "vision_end_token_id": token_id("<|vision_end|>"),
    }
    if family == "qwen2_vl":
        vision_config = {
            "depth": size.vision_layers,
            "embed_dim": size.vision_hidden,
            "hidden_size": size.text_hidden,  # the merger's output width: the LLM's
            "num_heads": size.vision_heads,
            "initializer_range": size.initializer_range,
        }
        config = Qwen2VLConfig(text_config=text_config, vision_config=vision_config, **special_ids)
        model_class, processor_class = Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    else:
        vision_config = {
            "depth": size.vision_layers,
            "hidden_size": size.vision_hidden,
            "intermediate_size": 2 * size.vision_hidden,
            "num_heads": size.vision_heads,
            "out_hidden_size": size.text_hidden,
            "fullatt_block_indexes": list(size.fullatt_block_indexes),
            "window_size": size.window_size,
            "initializer_range": size.initializer_range,
        }
        config = Qwen2_5_VLConfig(text_config=text_config, vision_config=vision_config, **special_ids)
        model_class, processor_class = Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    torch.manual_seed(seed)
    model = model_class(config).eval()
    model.generation_config.eos_token_id = [token_id("<|im_end|>"), token_id("<|endoftext|>")]
    model.generation_config.pad_token_id = token_id("<|endoftext|>")
    processor = processor_class(
        # The real checkpoints' pixel limits: 4 to 16384 LLM tokens per image.
        image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 16384),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN_VL_CHAT_TEMPLATE,
    )
    return model, processor


def save_random_qwen_vl(path: str | Path, family: str = "qwen2_vl", size: QwenVLSize = TINY, seed: int = 0) -> Path:
    """Build a random Qwen-VL and save model and processor under ``path``."""
    return save_checkpoint(path, *build_random_qwen_vl(family, size, seed))

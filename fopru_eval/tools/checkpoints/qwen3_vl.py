"""Random-weight Qwen3-VL checkpoints built offline from configs, for tests and CPU trials.

As for Qwen2-VL (``qwen_vl.py``, whose tokenizer this shares): the weights are random, the data path is the real one
from transformers (16-pixel patches, 2 x 2 merger, DeepStack features injected into the first LLM layers, interleaved
M-RoPE). Patch and merge size, image normalisation, special tokens, the chat template's rendering and the eos/pad roles
are those of Qwen/Qwen3-VL-8B-Instruct; only the widths and depths shrink.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    PreTrainedModel,
    ProcessorMixin,
    Qwen2VLImageProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from fopru_eval.tools.checkpoints.llava import save_checkpoint
from fopru_eval.tools.checkpoints.qwen_vl import build_tokenizer

# What Qwen3-VL-Instruct's chat template renders for system, user and assistant turns (its tool-calling branches
# left out): a system turn only as the first message, images and videos only in user turns. Unlike Qwen2-VL's, it adds
# no default system prompt: lmms-eval's qwen3_vl sends one itself.
QWEN3_VL_CHAT_TEMPLATE = (
    "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
    "{%- for message in messages %}{%- if message['role'] != 'system' or loop.first %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for content in message['content'] %}"
    "{%- if message['role'] == 'user' and (content['type'] == 'image' or 'image' in content "
    "or 'image_url' in content) %}"
    "{%- set image_count.value = image_count.value + 1 %}"
    "{%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif message['role'] == 'user' and (content['type'] == 'video' or 'video' in content) %}"
    "{%- set video_count.value = video_count.value + 1 %}"
    "{%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in content %}{{- content['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Qwen3-VL's image normalisation (not Qwen2-VL's CLIP statistics) and its patch geometry.
IMAGE_MEAN = IMAGE_STD = (0.5, 0.5, 0.5)
PATCH_SIZE, MERGE_SIZE = 16, 2


@dataclass(frozen=True)
class Qwen3VLSize:
    """The handful of numbers that decide a tiny Qwen3-VL's cost."""

    vision_hidden: int = 32
    vision_layers: int = 4
    vision_heads: int = 4
    # Blocks whose outputs are merged again and added to the hidden states of LLM layers 0, 1, ... (DeepStack); the
    # last block feeds the main merger. Qwen3-VL-8B: blocks 8, 16, 24 of 27.
    deepstack_visual_indexes: tuple[int, ...] = (1, 2)
    # The learned position embeddings sit on a square grid of this side, interpolated to each image's patch grid.
    position_grid: int = 16
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    # Interleaved M-RoPE: which of each head's rotary frequencies (here 64 / 4 / 2 = 8) turn with h and w.
    mrope_section: tuple[int, int, int] = (2, 3, 3)
    vocab_size: int = 400
    # As for the tiny Qwen2-VL: at 0.2, a model this small answers differently for different pixels.
    initializer_range: float = 0.2


TINY = Qwen3VLSize()
# On the scale of the Qwen-VL MID of the benchmark (fopru_eval/tools/bench/models.py): an 8 x 512 LLM and an 8 x 256
# tower, DeepStack from three blocks as in the real model.
MID = Qwen3VLSize(
    vision_hidden=256, vision_layers=8, vision_heads=8, deepstack_visual_indexes=(2, 4, 6), position_grid=48,
    text_hidden=512, text_layers=8, text_heads=8, text_kv_heads=4, mrope_section=(12, 10, 10), vocab_size=2000,
    initializer_range=0.02,
)  # fmt: skip


def build_random_qwen3_vl(size: Qwen3VLSize = TINY, seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A Qwen3-VL model with random weights and a matching processor."""
    tokenizer = build_tokenizer(size.vocab_size)
    token_id = tokenizer.convert_tokens_to_ids
    text_config = {
        "hidden_size": size.text_hidden,
        "intermediate_size": 3 * size.text_hidden,
        "num_hidden_layers": size.text_layers,
        "num_attention_heads": size.text_heads,
        "num_key_value_heads": size.text_kv_heads,
        "head_dim": size.text_hidden // size.text_heads,  # the config's default is the 8B's 128
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 4096,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5e6,
            "mrope_section": list(size.mrope_section),
            "mrope_interleaved": True,
        },
        "bos_token_id": token_id("<|endoftext|>"),
        "eos_token_id": token_id("<|im_end|>"),
        "pad_token_id": token_id("<|endoftext|>"),
        "initializer_range": size.initializer_range,
    }
    vision_config = {
        "depth": size.vision_layers,
        "hidden_size": size.vision_hidden,
        "intermediate_size": 2 * size.vision_hidden,
        "num_heads": size.vision_heads,
        "out_hidden_size": size.text_hidden,
        "patch_size": PATCH_SIZE,
        "spatial_merge_size": MERGE_SIZE,
        "num_position_embeddings": size.position_grid**2,
        "deepstack_visual_indexes": list(size.deepstack_visual_indexes),
        "initializer_range": size.initializer_range,
    }
    config = Qwen3VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = [token_id("<|im_end|>"), token_id("<|endoftext|>")]
    model.generation_config.pad_token_id = token_id("<|endoftext|>")
    image_processor = Qwen2VLImageProcessor(
        patch_size=PATCH_SIZE,
        merge_size=MERGE_SIZE,
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
        # The real checkpoint's limits: 64 to 16384 LLM tokens of 32 x 32 pixels.
        size={"shortest_edge": 65536, "longest_edge": 16777216},
    )
    processor = Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(),
        chat_template=QWEN3_VL_CHAT_TEMPLATE,
    )
    return model, processor


def save_random_qwen3_vl(path: str | Path, size: Qwen3VLSize = TINY, seed: int = 0) -> Path:
    """Build a random Qwen3-VL and save model and processor under ``path``."""
    return save_checkpoint(path, *build_random_qwen3_vl(size, seed))

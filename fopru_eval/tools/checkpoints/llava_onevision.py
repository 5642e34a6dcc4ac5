"""Random-weight LLaVA-OneVision checkpoints built offline from configs, for tests and CPU trials.

The weights are random; the data path is the real one from transformers: the OneVision image processor (a base view
plus crops chosen from ``image_grid_pinpoints``), the SigLIP tower over every view (no CLS token, every patch fed:
"full"), the projector, ``pack_image_features`` (unpadding, anyres-max interpolation, ``image_newline`` tokens) and a
Qwen2 LLM, as in the real llava-onevision-qwen2 checkpoints. The pinpoints keep the shape of the real ones (1 to 6
crops a side), scaled down to the tiny view size, and ``vision_aspect_ratio`` is the real "anyres_max_9": a mosaic of
more than 1.21 x 9 views' patches (3 x 4 crops or more) is interpolated down, smaller ones are not.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
)

from fopru_eval.tools.checkpoints.llava import TINY, LlavaSize, save_checkpoint
from fopru_eval.tools.checkpoints.tokenizers import CORPUS, train_bpe_tokenizer

# The layout of llava-hf/llava-onevision-qwen2-*-ov-hf's chat template: a ChatML turn per message, the images (and
# videos) first, then each text on its own line.
ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Qwen2's <|endoftext|> pads, <|im_end|> ends a turn (the eos of the OneVision tokenizers).
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
_CORPUS = ["user\nassistant\nsystem\nYou are a helpful assistant.", *CORPUS]

# The real pinpoints, in units of one view (384 px there): (rows, cols) of crops, 1 to 6 each.
CROP_LAYOUTS = tuple((rows, cols) for rows in range(1, 7) for cols in range(1, 7))
VISION_ASPECT_RATIO = "anyres_max_9"


def build_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained in a second, with OneVision's (Qwen2's) special tokens."""
    return train_bpe_tokenizer(
        vocab_size,
        SPECIAL_TOKENS,
        _CORPUS,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
    )


def build_random_llava_onevision(
    size: LlavaSize = TINY, seed: int = 0
) -> tuple[LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor]:
    """A LLaVA-OneVision-architecture model with random weights and a matching processor.

    Every view (the base view and each crop) is ``size.image_size`` pixels square, so it has
    ``(image_size / patch_size) ** 2`` patch tokens: 6 x 6 = 36 for ``TINY``.
    """
    tokenizer = build_tokenizer(size.vocab_size)
    view = size.image_size
    pinpoints = [[rows * view, cols * view] for rows, cols in CROP_LAYOUTS]
    vision_config = SiglipVisionConfig(
        hidden_size=size.vision_hidden,
        intermediate_size=4 * size.vision_hidden,
        num_hidden_layers=size.vision_layers,
        num_attention_heads=size.vision_heads,
        image_size=view,
        patch_size=size.patch_size,
        vision_use_head=False,  # as in OneVision: the LLM reads the patch tokens, not a pooled one
    )
    text_config = Qwen2Config(
        hidden_size=size.text_hidden,
        intermediate_size=3 * size.text_hidden,
        num_hidden_layers=size.text_layers,
        num_attention_heads=size.text_heads,
        num_key_value_heads=size.text_heads,
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # At the usual 0.02 a 2-layer random LLM gives every prompt the same answer (see llava_next.py).
        initializer_range=0.2,
    )
    config = LlavaOnevisionConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio=VISION_ASPECT_RATIO,
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    square = {"height": view, "width": view}
    # SigLIP's normalisation, as in the real processor.
    normalisation = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=square, image_grid_pinpoints=pinpoints, **normalisation),
        tokenizer=tokenizer,
        video_processor=LlavaOnevisionVideoProcessor(size=square, **normalisation),
        num_image_tokens=(view // size.patch_size) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio=VISION_ASPECT_RATIO,
        chat_template=ONEVISION_CHAT_TEMPLATE,
    )
    return model, processor


def save_random_llava_onevision(path: str | Path, size: LlavaSize = TINY, seed: int = 0) -> Path:
    """Build a random LLaVA-OneVision and save model and processor under ``path``."""
    return save_checkpoint(path, *build_random_llava_onevision(size, seed))

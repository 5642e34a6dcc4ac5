"""Random-weight LLaVA-NeXT checkpoints built offline from configs, for tests.

Same idea as ``random_llava.py`` (whose tokenizer and chat template this reuses): the weights are random, but the
data path is the real one from transformers: the anyres image processor (a base view plus crops chosen from
``image_grid_pinpoints``), the CLIP tower over every view, the projector, ``pack_image_features`` (unpadding and
``image_newline`` tokens) and the Llama. The pinpoints keep the shapes of llava-v1.6's own (1 x 2, 2 x 1, 2 x 2,
1 x 3 and 3 x 1 crops), scaled down to the tiny crop size, so crops are few and tiny.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
)

from fopru_eval.tools.checkpoints.llava import (
    LLAVA_CHAT_TEMPLATE,
    TINY,
    LlavaSize,
    build_tokenizer,
    save_checkpoint,
    sub_configs,
)

# llava-v1.6's pinpoints, in units of one crop (336 px there): (height, width) multiples of the crop size.
CROP_LAYOUTS = ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))


def build_random_llava_next(
    size: LlavaSize = TINY, seed: int = 0
) -> tuple[LlavaNextForConditionalGeneration, LlavaNextProcessor]:
    """A LLaVA-NeXT-architecture model with random weights and a matching processor.

    Every view (the base view and each crop) is ``size.image_size`` pixels square, so it has
    ``(image_size / patch_size) ** 2`` patch tokens: 6 x 6 = 36 for ``TINY``.
    """
    tokenizer = build_tokenizer(size.vocab_size)
    crop = size.image_size
    pinpoints = [[rows * crop, cols * crop] for rows, cols in CROP_LAYOUTS]
    # At the usual 0.02, a 2-layer random LLM gives every prompt the same answer, so exactness tests against
    # references would prove little; at 0.2 answers differ from doc to doc and from image to image.
    vision_config, text_config = sub_configs(size, tokenizer, initializer_range=0.2)
    config = LlavaNextConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        image_seq_length=(crop // size.patch_size) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": crop},
        crop_size={"height": crop, "width": crop},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=size.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    return model, processor


def save_random_llava_next(path: str | Path, size: LlavaSize = TINY, seed: int = 0) -> Path:
    """Build a random LLaVA-NeXT and save model and processor under ``path``."""
    return save_checkpoint(path, *build_random_llava_next(size, seed))

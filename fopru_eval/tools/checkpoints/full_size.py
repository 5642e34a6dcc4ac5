"""Random-weight checkpoints of the real 7B architectures, built offline from configs, for GPU benchmarks.

The configs below write out the published architectures of llava-hf/llava-1.5-7b-hf, llava-hf/llava-v1.6-mistral-7b-hf,
Qwen/Qwen2-VL-7B-Instruct and Qwen/Qwen2.5-VL-7B-Instruct, so nothing comes from the hub. The weights are random, so
answers mean nothing; what matters is that every layer has the real shape, so that times and memory are those of the
real models.

Each checkpoint ships the offline processor its family's ``random_*`` module builds, at the real image geometry
(LLaVA-1.5's 336 px CLIP views, LLaVA-NeXT's anyres pinpoints, Qwen's 14 px patches and 2 x 2 merge). Its tokenizer is
a small offline one, so the special-token ids in the configs are that tokenizer's, not the hub's (``<image>`` is 4,
not 32000); the embedding and LM head keep the published vocabulary size all the same, because their cost is part of
the model's. The rows the tokenizer never produces just go unused (and decode to nothing if a random model picks them).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaNextConfig,
    MistralConfig,
    PreTrainedConfig,
    PreTrainedModel,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2VLConfig,
)

from fopru_eval.families import FAMILIES as MODEL_FAMILIES
from fopru_eval.tools.checkpoints import llava as random_llava
from fopru_eval.tools.checkpoints import qwen_vl as random_qwen_vl
from fopru_eval.tools.checkpoints.llava import build_random_llava, save_checkpoint
from fopru_eval.tools.checkpoints.llava_next import build_random_llava_next
from fopru_eval.tools.checkpoints.qwen_vl import build_random_qwen_vl

FAMILIES = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl")
MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {name: MODEL_FAMILIES[name].model_class for name in FAMILIES}

# The size the offline BPE tokenizers are trained towards, as for random_llava.MID: their small corpus runs out of
# merges first (a few hundred tokens), so prompts tokenize into real sub-words.
TOKENIZER_VOCAB = 2000

# CLIP ViT-L/14 at 336 px, the tower of both LLaVA checkpoints (openai/clip-vit-large-patch14-336).
CLIP_IMAGE_SIZE, CLIP_PATCH_SIZE = 336, 14
# llava-v1.6's anyres resolutions, (height, width): 1 x 2, 2 x 1, 2 x 2, 3 x 1 and 1 x 3 crops of 336 px.
LLAVA_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"family={family!r} is not supported; accepted values: {', '.join(FAMILIES)}")


# ----- configs --------------------------------------------------------------------------------------------------------


def _llava_config(family: str) -> LlavaConfig | LlavaNextConfig:
    """LLaVA-1.5-7B (Vicuna-7B) or LLaVA-NeXT (v1.6) Mistral-7B: the same CLIP tower and 2-layer GELU projector."""
    tokenizer = random_llava.build_tokenizer(TOKENIZER_VOCAB)
    vision_config = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=CLIP_IMAGE_SIZE,
        patch_size=CLIP_PATCH_SIZE,
        projection_dim=768,
    )
    special_ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    # Both vocabularies are 32000 tokens plus <image> and <pad>, padded to a multiple of 64 by llava-hf.
    if family == "llava":  # Vicuna-7B v1.5 (Llama-2-7B)
        text_config = LlamaConfig(
            hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
            num_key_value_heads=32, vocab_size=32064, rms_norm_eps=1e-5, max_position_embeddings=4096, **special_ids,
        )  # fmt: skip
    else:  # Mistral-7B-Instruct v0.2: grouped-query attention (8 key-value heads), no sliding window
        text_config = MistralConfig(
            hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
            num_key_value_heads=8, vocab_size=32064, rms_norm_eps=1e-5, max_position_embeddings=32768,
            sliding_window=None, rope_parameters={"rope_type": "default", "rope_theta": 1e6}, **special_ids,
        )  # fmt: skip
    shared = {
        "vision_config": vision_config,
        "text_config": text_config,
        "image_token_index": tokenizer.convert_tokens_to_ids("<image>"),
        "image_seq_length": (CLIP_IMAGE_SIZE // CLIP_PATCH_SIZE) ** 2,  # 576 tokens per view
        "projector_hidden_act": "gelu",
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "tie_word_embeddings": False,
    }
    if family == "llava":
        return LlavaConfig(**shared)
    return LlavaNextConfig(**shared, image_grid_pinpoints=LLAVA_NEXT_PINPOINTS)


def _qwen_vl_config(family: str) -> Qwen2VLConfig | Qwen2_5_VLConfig:
    """Qwen2-VL-7B-Instruct or Qwen2.5-VL-7B-Instruct: a 0.68B-weight tower and the Qwen2-7B LLM (GQA, M-RoPE)."""
    tokenizer = random_qwen_vl.build_tokenizer(TOKENIZER_VOCAB)
    token_id = tokenizer.convert_tokens_to_ids
    text_config = {
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 32768 if family == "qwen2_vl" else 128000,
        # M-RoPE: each head's 64 rotary frequencies split 16 / 24 / 24 between time, height and width.
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        "bos_token_id": token_id("<|endoftext|>"),
        "eos_token_id": token_id("<|im_end|>"),
        "pad_token_id": token_id("<|endoftext|>"),
    }
    special_ids = {
        "image_token_id": token_id("<|image_pad|>"),
        "video_token_id": token_id("<|video_pad|>"),
        "vision_start_token_id": token_id("<|vision_start|>"),
        "vision_end_token_id": token_id("<|vision_end|>"),
    }
    patches = {"patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}
    if family == "qwen2_vl":
        # A ViT of width 1280 with LayerNorm and a QuickGELU MLP; the merger maps 2 x 2 patches to the LLM's 3584.
        vision_config = {
            "depth": 32,
            "embed_dim": 1280,
            "hidden_size": 3584,
            "mlp_ratio": 4,
            "num_heads": 16,
            "hidden_act": "quick_gelu",
            **patches,
        }
        return Qwen2VLConfig(
            text_config=text_config, vision_config=vision_config, tie_word_embeddings=False, **special_ids
        )
    # Qwen2.5-VL's tower: RMSNorm and a SwiGLU MLP, window attention (112 px windows) but in blocks 7, 15, 23, 31.
    vision_config = {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 3584,
        "hidden_act": "silu",
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
        **patches,
    }
    return Qwen2_5_VLConfig(
        text_config=text_config, vision_config=vision_config, tie_word_embeddings=False, **special_ids
    )


def full_size_config(family: str, llm_layers: int | None = None) -> PreTrainedConfig:
    """The published architecture of ``family``'s 7B checkpoint, with the offline tokenizer's special-token ids.

    ``family`` is one of ``FAMILIES``: "llava" (llava-hf/llava-1.5-7b-hf), "llava_next"
    (llava-hf/llava-v1.6-mistral-7b-hf), "qwen2_vl" (Qwen/Qwen2-VL-7B-Instruct) or "qwen2_5_vl"
    (Qwen/Qwen2.5-VL-7B-Instruct). ``llm_layers`` keeps only that many of the LLM's decoder layers (all identical):
    the whole vision tower with a slice of the LLM, for measuring on a machine that cannot hold or run the whole.
    """
    _check_family(family)
    config = _llava_config(family) if family in ("llava", "llava_next") else _qwen_vl_config(family)
    if llm_layers is not None:
        if not 1 <= llm_layers <= config.text_config.num_hidden_layers:
            raise ValueError(f"llm_layers={llm_layers} is not in 1..{config.text_config.num_hidden_layers}")
        config.text_config.num_hidden_layers = llm_layers
        if getattr(config.text_config, "layer_types", None):
            config.text_config.layer_types = config.text_config.layer_types[:llm_layers]
    return config


# ----- checkpoints ----------------------------------------------------------------------------------------------------


def _offline_reference(family: str) -> tuple[PreTrainedModel, ProcessorMixin]:
    """The ``random_*`` builder's model and processor for ``family`` at the real image geometry.

    The processor is the one the full-size checkpoint ships, and the model's generation config carries the eos/pad
    settings the builder gives its models. The builders make both together, so a throwaway model of TINY widths (well
    under a million weights) comes along."""
    if family in ("llava", "llava_next"):
        size = dataclasses.replace(
            random_llava.TINY, image_size=CLIP_IMAGE_SIZE, patch_size=CLIP_PATCH_SIZE, vocab_size=TOKENIZER_VOCAB
        )
        # random_llava_next derives the pinpoints from the crop size: at 336 px they are llava-v1.6's own.
        build = build_random_llava if family == "llava" else build_random_llava_next
        return build(size)
    return build_random_qwen_vl(family, dataclasses.replace(random_qwen_vl.TINY, vocab_size=TOKENIZER_VOCAB))


def save_random_full_size(
    path: str | Path,
    family: str,
    device: str | torch.device = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    config: PreTrainedConfig | None = None,
) -> Path:
    """Build ``family``'s full-size model with random weights and save it, with its offline processor, under ``path``.

    The weights are created directly on ``device`` in ``dtype``, so a 7B model never materialises in float32 or in
    host memory (14 to 17 GB of GPU memory in bfloat16); only saving copies it out, shard by shard (transformers'
    default shard holds up to 50 GB, so about the whole checkpoint).

    ``config`` replaces ``full_size_config(family)``, e.g. with a shrunk config of the same family for a quick CPU
    test; it must keep the real image geometry, which the processor has. The checkpoint loads with the family's
    ``*ForConditionalGeneration.from_pretrained`` and ``AutoProcessor.from_pretrained``, as the adapters do.
    """
    _check_family(family)
    if config is None:
        config = full_size_config(family)
    elif config.model_type != family:
        raise ValueError(f"config is a {config.model_type!r} config; family={family!r} needs a {family!r} config")
    reference, processor = _offline_reference(family)
    torch.manual_seed(seed)
    # _from_config creates the weights in ``dtype`` (and records it in the saved config, so dtype="auto" loads it
    # back); the device context puts them straight on ``device``. A copy, because _from_config sets config.dtype.
    with torch.device(device):
        model = MODEL_CLASSES[family]._from_config(copy.deepcopy(config), dtype=dtype).eval()
    model.generation_config = copy.deepcopy(reference.generation_config)
    return save_checkpoint(path, model, processor)

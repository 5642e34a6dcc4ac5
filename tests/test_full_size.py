"""full_size: the published 7B architectures (counted on the meta device against hand formulas and the hub's own
totals), and the checkpoint save path on the CPU with shrunk configs of each family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoProcessor, PreTrainedConfig

from conftest import draw_image, user_turn
from fopru_eval.tools.checkpoints.full_size import FAMILIES, MODEL_CLASSES, full_size_config, save_random_full_size

# ----- parameter counts from the published dimensions, independently of the configs -----------------------------------


def linear(fan_in: int, fan_out: int, bias: bool = True) -> int:
    return fan_in * fan_out + (fan_out if bias else 0)


def clip_vit_l_336() -> int:
    """CLIP ViT-L/14 at 336 px (width 1024, 24 layers, MLP 4096), with its pre- and post-LayerNorm."""
    width, patches = 1024, (336 // 14) ** 2
    embeddings = 3 * 14 * 14 * width + width + (patches + 1) * width  # patch conv (no bias), CLS, positions
    layer = 4 * linear(width, width) + linear(width, 4096) + linear(4096, width) + 2 * 2 * width
    return embeddings + 24 * layer + 2 * 2 * width


def decoder(hidden: int, layers: int, heads: int, kv_heads: int, mlp: int, vocab: int, qkv_bias: bool) -> int:
    """A Llama/Qwen2 decoder: GQA attention, SwiGLU MLP, two RMSNorms a layer, untied embedding and LM head."""
    kv = hidden // heads * kv_heads
    attention = linear(hidden, hidden, qkv_bias) + 2 * linear(hidden, kv, qkv_bias) + linear(hidden, hidden, False)
    layer = attention + 3 * hidden * mlp + 2 * hidden
    return 2 * vocab * hidden + layers * layer + hidden


LLAVA_PROJECTOR = linear(1024, 4096) + linear(4096, 4096)


def llava_1_5_7b() -> int:
    vicuna_7b = decoder(4096, 32, 32, 32, 11008, 32064, qkv_bias=False)
    return clip_vit_l_336() + LLAVA_PROJECTOR + vicuna_7b


def llava_v1_6_mistral_7b() -> int:
    """The same tower and projector, Mistral-7B (8 key-value heads, MLP 14336), and one learned image_newline vector
    of the LLM's width."""
    mistral_7b = decoder(4096, 32, 32, 8, 14336, 32064, qkv_bias=False)
    return clip_vit_l_336() + LLAVA_PROJECTOR + mistral_7b + 4096


def qwen_vl_7b(qwen2_5: bool) -> int:
    """Qwen2-VL-7B (LayerNorm, GELU MLP 1280 -> 5120) or Qwen2.5-VL-7B (RMSNorm, SwiGLU MLP 1280 -> 3420) tower, the
    2 x 2 patch merger to 3584, and the Qwen2-7B decoder."""
    width = 1280
    patch_embed = 3 * 2 * 14 * 14 * width  # Conv3d over 2 frames x 14 x 14 pixels, no bias
    attention = linear(width, 3 * width) + linear(width, width)
    if qwen2_5:
        block = 2 * width + attention + 2 * linear(width, 3420) + linear(3420, width)
        merger_norm = width
    else:
        block = 2 * 2 * width + attention + linear(width, 4 * width) + linear(4 * width, width)
        merger_norm = 2 * width
    merger = merger_norm + linear(4 * width, 4 * width) + linear(4 * width, 3584)
    qwen2_7b = decoder(3584, 28, 28, 4, 18944, 152064, qkv_bias=True)
    return patch_embed + 32 * block + merger + qwen2_7b


HAND_COUNTS = {
    "llava": llava_1_5_7b(),
    "llava_next": llava_v1_6_mistral_7b(),
    "qwen2_vl": qwen_vl_7b(qwen2_5=False),
    "qwen2_5_vl": qwen_vl_7b(qwen2_5=True),
}
# Exact totals of the hub checkpoints (parameter counts, and safetensors total_size / 2 bytes of bf16 or fp16). No
# exact total was at hand for llava-v1.6-mistral-7b-hf, only a rounded 7.57B, so it rests on the hand formula alone.
PUBLISHED_COUNTS = {
    "llava": 7_063_427_072,
    "qwen2_vl": 8_291_375_616,
    "qwen2_5_vl": 8_292_166_656,
}


@pytest.mark.parametrize("family", PUBLISHED_COUNTS)
def test_hand_formula_matches_the_published_total(family: str) -> None:
    assert HAND_COUNTS[family] == PUBLISHED_COUNTS[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_full_size_model_has_the_published_parameter_count(family: str) -> None:
    config = full_size_config(family)
    with torch.device("meta"):
        model = MODEL_CLASSES[family](config)
    assert sum(p.numel() for p in model.parameters()) == HAND_COUNTS[family]
    # Rounded, the figures quoted for the checkpoints (the only published one for llava-v1.6-mistral-7b-hf).
    assert round(HAND_COUNTS[family] / 1e9, 2) == {"llava": 7.06, "llava_next": 7.57}.get(family, 8.29)


# ----- the save path, on the CPU with shrunk configs ---------------------------------------------------------------


def shrunk_config(family: str) -> PreTrainedConfig:
    """``full_size_config(family)`` with tiny widths and depths; the image geometry and vocabulary are kept."""
    config = full_size_config(family)
    text = config.text_config
    text.hidden_size, text.intermediate_size, text.num_hidden_layers = 32, 64, 2
    text.num_attention_heads, text.num_key_value_heads = 2, 2
    vision = config.vision_config
    if family in ("llava", "llava_next"):
        # Two layers, since LLaVA reads the penultimate one.
        vision.hidden_size, vision.intermediate_size = 16, 32
        vision.num_hidden_layers, vision.num_attention_heads = 2, 2
        return config
    text.layer_types = text.layer_types[:2]
    text.rope_parameters["mrope_section"] = [2, 3, 3]  # 8 rotary frequencies per 16-wide head
    vision.depth, vision.num_heads = 2, 2
    if family == "qwen2_vl":
        vision.embed_dim, vision.hidden_size = 16, text.hidden_size
    else:
        vision.hidden_size, vision.intermediate_size, vision.out_hidden_size = 16, 32, text.hidden_size
        vision.fullatt_block_indexes = [1]
    return config


# bfloat16 is what the GPU benchmark asks for; float16 on two families shows the dtype is the caller's, not fixed.
@pytest.mark.parametrize(
    ("family", "dtype"),
    [
        ("llava", torch.bfloat16),
        ("llava_next", torch.float16),
        ("qwen2_vl", torch.float16),
        ("qwen2_5_vl", torch.bfloat16),
    ],
)
def test_saved_checkpoint_loads_and_runs_with_its_processor(family: str, dtype: torch.dtype, tmp_path: Path) -> None:
    config = shrunk_config(family)
    path = save_random_full_size(tmp_path / family, family, device="cpu", dtype=dtype, config=config)

    # Saved in ``dtype``, and recorded so that dtype="auto" (the adapters' default) loads it as such.
    assert json.loads((path / "config.json").read_text())["dtype"] == str(dtype).removeprefix("torch.")
    model = MODEL_CLASSES[family].from_pretrained(path, dtype="auto")
    assert {p.dtype for p in model.parameters()} == {dtype}
    # Initialised as transformers initialises (normal, std initializer_range), not left as empty memory.
    lm_head = model.get_output_embeddings().weight.float()
    assert lm_head.std().item() == pytest.approx(config.text_config.initializer_range, rel=0.05)
    assert model.config.text_config.vocab_size == config.text_config.vocab_size
    processor = AutoProcessor.from_pretrained(path)
    assert processor.image_token_id == model.config.image_token_id == config.image_token_id
    assert len(processor.tokenizer) < model.config.text_config.vocab_size

    # The processor expands the image into as many image tokens as the tower gives features, or the forward fails.
    image = draw_image("red", (10, 10, 40, 30), size=(56, 56))
    text = processor.apply_chat_template(user_turn("What color?", [image]), add_generation_prompt=True)
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    assert (inputs["input_ids"] == model.config.image_token_id).any()
    with torch.inference_mode():
        logits = model(**inputs).logits
    assert logits.shape[-1] == config.text_config.vocab_size


def test_unknown_family_is_refused(tmp_path: Path) -> None:
    message = r"family='llava2'.*accepted values: llava, llava_next, qwen2_vl, qwen2_5_vl"
    with pytest.raises(ValueError, match=message):
        full_size_config("llava2")
    with pytest.raises(ValueError, match=message):
        save_random_full_size(tmp_path, "llava2", device="cpu")


def test_config_of_another_family_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'qwen2_vl' config; family='qwen2_5_vl'"):
        save_random_full_size(tmp_path, "qwen2_5_vl", device="cpu", config=shrunk_config("qwen2_vl"))

"""Estimated prefill FLOPs, against counts written out by hand for the tiny test configs (2 FLOPs per multiply-add)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import draw_image, user_turn
from fopru_eval.tools.checkpoints.qwen_vl import save_random_qwen_vl
from fopru_model_adapters.base import Prompt
from fopru_model_adapters.llava import LlavaFoPru
from fopru_model_adapters.qwen_vl import Qwen2_5_VLFoPru


def llava_llm(tokens: int) -> int:
    """The tiny LLaVA's Llama: 2 layers, width 64, 4 heads (4 KV heads) of 16, MLP 192 (gated), vocabulary 400."""
    per_layer = (
        2 * tokens * 64 * (64 + 64 + 64 + 64)  # q, k, v, o
        + 2 * 2 * (tokens * (tokens + 1) // 2) * 64  # causal QK^T and attention x V
        + 3 * 2 * tokens * 64 * 192  # gate, up, down
    )
    return 2 * per_layer + 2 * 64 * 400  # the LM head at the last position


# The tiny LLaVA's image: 48 px, patches of 8, so 36 patches + CLS = 37 tokens through 3 CLIP layers of width 32
# (4 heads, MLP 128); the projector 32 -> 64 -> 64 over the 36 patch features.
LLAVA_IMAGE = (
    2 * 36 * (3 * 8 * 8) * 32  # patch embedding
    + 3 * (2 * 37 * 32 * (4 * 32) + 2 * 2 * 37 * 37 * 32 + 2 * 2 * 37 * 32 * 128)
    + 2 * 36 * 32 * 64
    + 2 * 36 * 64 * 64
)


def test_llava_prefill_flops_are_the_hand_count(tiny_llava: Path) -> None:
    image = draw_image("red", (0, 0, 8, 8))
    prompt = Prompt(user_turn("What color?", [image]), [image], "t/test/0")
    for strategy, budget in (("none", {}), ("rank", {"keep_tokens": 9})):
        batch = LlavaFoPru(pretrained=str(tiny_llava), device="cpu", strategy=strategy, **budget).prepare([prompt])
        # The tower and projector run over every patch whatever is kept; the LLM over the tokens fed.
        assert batch.prefill_flops == [LLAVA_IMAGE + llava_llm(batch.input_tokens[0])]
        assert batch.token_counts(0).to_dict()["prefill_flops"] == batch.prefill_flops[0]


@pytest.fixture(scope="module")
def tiny_qwen2_5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_qwen_vl(tmp_path_factory.mktemp("tiny_qwen2_5_vl") / "checkpoint", "qwen2_5_vl")


def test_qwen2_5_vl_prefill_flops_count_windows_and_full_attention_blocks(tiny_qwen2_5: Path) -> None:
    """A 112 x 56 image: 8 x 4 patches of 14. The tower: width 32, 4 heads, gated MLP 64, 4 blocks, of which 1 and 2
    attend over the whole image and 0 and 3 within windows of 56 px = 4 x 4 patches (two windows of 16 patches);
    then the merger over 8 groups of 2 x 2 patches, 128 -> 128 -> 64."""
    image = draw_image("red", (0, 0, 8, 8), size=(56, 112))
    prompt = Prompt(user_turn("What color?", [image]), [image], "t/test/0")
    adapter = Qwen2_5_VLFoPru(
        pretrained=str(tiny_qwen2_5), device="cpu", strategy="none", min_pixels=3136, max_pixels=12544
    )
    batch = adapter.prepare([prompt])
    block_without_attention = 2 * 32 * 32 * (4 * 32) + 3 * 2 * 32 * 32 * 64  # per patch-token: q, k, v, o and MLP
    tower = (
        2 * 32 * (3 * 2 * 14 * 14) * 32  # patch embedding (3 channels, 2 frames, 14 x 14)
        + 4 * block_without_attention
        + 2 * (2 * 2 * (32 * 32) * 32)  # blocks 1, 2: all 32 x 32 (query, key) pairs
        + 2 * (2 * 2 * (2 * 16 * 16) * 32)  # blocks 0, 3: two windows of 16 x 16 pairs
        + 2 * 8 * 128 * 128
        + 2 * 8 * 128 * 64
    )
    tokens = batch.input_tokens[0]
    llm = (
        2
        * (
            2 * tokens * 64 * (64 + 2 * 32 + 64)  # q and o of 4 x 16, k and v of 2 KV heads x 16
            + 2 * 2 * (tokens * (tokens + 1) // 2) * 64
            + 3 * 2 * tokens * 64 * 192
        )
        + 2 * 64 * 400
    )
    assert batch.prefill_flops == [tower + llm]

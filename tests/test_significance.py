"""Significance against an independent float64 computation of the paper's formulas, on real CLIP attention maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from conftest import draw_image
from fopru_eval.core.attention import head_averaged_attention, patch_significance, streamed_patch_significance
from fopru_eval.families.hooks import SignificanceCapture


def reference_significance(attention: np.ndarray, mode: str) -> np.ndarray:
    """FoPru section 3.2 written out with loops: attention is (heads, tokens, tokens) with a CLS token first."""
    heads, tokens, _ = attention.shape
    averaged = sum(attention[h] for h in range(heads)) / heads
    patches = averaged[1:, 1:]
    n = tokens - 1
    column = np.array([sum(patches[i, j] for i in range(n)) / n for j in range(n)])
    row = np.array([sum(patches[i, j] for j in range(n)) / n for i in range(n)])
    if mode == "column":
        return column
    if mode == "row":
        return row
    return column if column.var() > row.var() else row


def reference_attention(q: np.ndarray, k: np.ndarray, heads: int, scale: float) -> np.ndarray:
    tokens, width = q.shape
    d = width // heads
    maps = []
    for h in range(heads):
        scores = q[:, h * d : (h + 1) * d] @ k[:, h * d : (h + 1) * d].T * scale
        scores = np.exp(scores - scores.max(axis=1, keepdims=True))
        maps.append(scores / scores.sum(axis=1, keepdims=True))
    return np.stack(maps)


@pytest.mark.parametrize("mode", ["auto", "column", "row"])
def test_formulas_match_the_reference(mode: str) -> None:
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 17, 32, generator=generator, dtype=torch.float64)
    k = torch.randn(2, 17, 32, generator=generator, dtype=torch.float64)
    ours = patch_significance(head_averaged_attention(q, k, num_heads=4, scale=8**-0.5), 1, mode)
    for image in range(2):
        attention = reference_attention(q[image].numpy(), k[image].numpy(), heads=4, scale=8**-0.5)
        expected = reference_significance(attention, mode)
        np.testing.assert_allclose(ours[image].numpy(), expected, rtol=1e-5, atol=1e-7)


# Chunks of: one query row of one map; two rows (so the CLS row shares a chunk with a patch row); five rows (the
# chunk boundaries fall mid-image); two whole maps; all maps at once.
@pytest.mark.parametrize("max_chunk_elements", [17, 34, 85, 2 * 17 * 17, 1 << 20])
@pytest.mark.parametrize("mode", ["auto", "column", "row"])
def test_streamed_significance_matches_the_reference(mode: str, max_chunk_elements: int) -> None:
    """The chunked reduction the capture runs equals the formulas on whole maps, however the chunks fall."""
    generator = torch.Generator().manual_seed(1)
    q = torch.randn(3, 17, 32, generator=generator, dtype=torch.float64)
    k = torch.randn(3, 17, 32, generator=generator, dtype=torch.float64)
    ours = streamed_patch_significance(q, k, 4, 8**-0.5, 1, mode, max_chunk_elements=max_chunk_elements)
    for image in range(3):
        attention = reference_attention(q[image].numpy(), k[image].numpy(), heads=4, scale=8**-0.5)
        expected = reference_significance(attention, mode)
        np.testing.assert_allclose(ours[image].numpy(), expected, rtol=1e-5, atol=1e-7)


def test_bf16_projections_are_scored_in_float32() -> None:
    """A bf16 model's queries and keys give the significance float32 computes from the same values; a bf16 matmul or
    scaling (scores rounded to 8 bits of mantissa) would miss it by far more than the tolerance."""
    generator = torch.Generator().manual_seed(2)
    q = (3 * torch.randn(2, 65, 64, generator=generator)).bfloat16()
    k = (3 * torch.randn(2, 65, 64, generator=generator)).bfloat16()
    ours = streamed_patch_significance(q, k, 4, 16**-0.5, 1, "column")
    exact = streamed_patch_significance(q.float(), k.float(), 4, 16**-0.5, 1, "column")
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, exact, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("mode", ["auto", "column", "row"])
def test_capture_matches_the_eager_attention_of_the_feature_layer(tiny_llava: Path, mode: str) -> None:
    """Hooks on an SDPA tower reproduce what eager attention with output_attentions reports for layer L-2."""
    processor = AutoProcessor.from_pretrained(tiny_llava)
    pixel_values = processor.image_processor(
        [draw_image("red", (4, 4, 20, 20)), draw_image("blue", (30, 20, 60, 50))], return_tensors="pt"
    )["pixel_values"]

    eager = LlavaForConditionalGeneration.from_pretrained(tiny_llava, attn_implementation="eager").eval()
    tower = eager.model.vision_tower
    with torch.no_grad():
        attentions = tower(pixel_values, output_attentions=True).attentions
    layers = len(tower.encoder.layers)
    feature_layer = layers + eager.config.vision_feature_layer  # hidden_states[-2] is the output of layer L-2

    sdpa = LlavaForConditionalGeneration.from_pretrained(tiny_llava, attn_implementation="sdpa").eval()
    attention = sdpa.model.vision_tower.encoder.layers[feature_layer].self_attn
    capture = SignificanceCapture(attention.q_proj, attention.k_proj, attention.num_heads, attention.scale, 1, mode)
    with capture, torch.no_grad():
        sdpa.model.get_image_features(pixel_values=pixel_values)
    for image in range(2):
        expected = reference_significance(attentions[feature_layer][image].double().numpy(), mode)
        np.testing.assert_allclose(capture.significance[image].numpy(), expected, rtol=1e-4, atol=1e-6)


def test_capture_removes_its_hooks(tiny_llava: Path) -> None:
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava).eval()
    attention = model.model.vision_tower.encoder.layers[1].self_attn
    with SignificanceCapture(attention.q_proj, attention.k_proj, attention.num_heads, attention.scale, 1, "auto"):
        assert attention.q_proj._forward_hooks and attention.k_proj._forward_hooks
    assert not attention.q_proj._forward_hooks and not attention.k_proj._forward_hooks

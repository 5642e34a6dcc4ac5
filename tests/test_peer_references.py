"""The peer methods (VisionZip, VisPruner, DivPrune) through ``prune_batch`` on tiny random LLaVAs, against independent
float64 references written from the authors' rules: the tower's hidden states from a plain HF forward, the scored
layer's CLS attention and keys by hand from its weights, the selection and merging in numpy, the projector by hand."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import draw_image, mixed_prompts, user_turn
from fopru_eval.core.config import PruningConfig, PruningConfigError
from fopru_eval.families import FAMILIES, Prompt, PrunedBatch, prune_batch
from fopru_eval.families.llava import Llava
from fopru_eval.families.llava_next import LlavaNext
from fopru_eval.families.llava_onevision import LlavaOnevision
from fopru_eval.tools.checkpoints.llava import build_random_llava
from fopru_eval.tools.checkpoints.llava_next import build_random_llava_next
from fopru_eval.tools.checkpoints.llava_onevision import build_random_llava_onevision
from fopru_eval.tools.checkpoints.qwen3_vl import build_random_qwen3_vl
from fopru_eval.tools.checkpoints.qwen_vl import build_random_qwen_vl

PATCHES = 36  # 6 x 6 per tower view
# (strategy, keep_tokens, options): budgets whose splits exercise every branch - VisionZip at 20 tokens is 17 dominant
# + round(20 * 10 / 64) = 3 contextual over 19 others (stride 6), at 12 with contextual_ratio 0.5 it is 6 + 6 over
# 30 others (stride 5); VisPruner at 20 is 10 important + 10 diverse (two rounds of 8 removals out of 26), at 12 with
# important_ratio 0.25 it is 3 + 9 (three rounds out of 33). On LLaVA-NeXT's 120-token mosaic the rounds are many more.
CASES = [
    ("visionzip", 20, ()),
    ("visionzip", 12, (("contextual_ratio", 0.5),)),
    ("vispruner", 20, ()),
    ("vispruner", 12, (("important_ratio", 0.25),)),
    ("divprune", 10, ()),
]
STRATEGIES = ["visionzip", "vispruner", "divprune"]


# ----- the references, in numpy float64 --------------------------------------------------------------------------


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def layer_norm(x: np.ndarray, norm: torch.nn.LayerNorm) -> np.ndarray:
    weight, bias = (p.detach().double().numpy() for p in (norm.weight, norm.bias))
    centred = x - x.mean(axis=-1, keepdims=True)
    return centred / np.sqrt((centred**2).mean(axis=-1, keepdims=True) + norm.eps) * weight + bias


def linear(x: np.ndarray, layer: torch.nn.Linear) -> np.ndarray:
    return x @ layer.weight.detach().double().numpy().T + layer.bias.detach().double().numpy()


def project(model: torch.nn.Module, hidden: np.ndarray) -> np.ndarray:
    """LLaVA's projector (linear, exact erf GELU, linear) on pre-projector features."""
    projector = model.model.multi_modal_projector
    x = linear(hidden, projector.linear_1)
    x = 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))
    return linear(x, projector.linear_2)


def tower_reference(model: torch.nn.Module, pixel_values: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per tower view: the CLS token's attention over the patches, (views, 36); the patch keys averaged over heads,
    (views, 36, head_dim); the pre-projector features (the output of vision_feature_layer -2, CLS dropped),
    (views, 36, width). The scored layer's attention is recomputed from its input and weights, not read from HF."""
    tower = model.model.vision_tower
    with torch.no_grad():
        hidden_states = tower(pixel_values, output_hidden_states=True).hidden_states
    layers = getattr(tower, "vision_model", tower).encoder.layers
    scored = len(layers) - 2  # hidden_states[-2] is the output of layer len - 2, whose input is hidden_states[len - 2]
    layer = layers[scored]
    x = layer_norm(hidden_states[scored].double().numpy(), layer.layer_norm1)
    heads = layer.self_attn.num_heads
    views, tokens, width = x.shape
    projections = (layer.self_attn.q_proj, layer.self_attn.k_proj)
    q, k = (linear(x, proj).reshape(views, tokens, heads, -1).transpose(0, 2, 1, 3) for proj in projections)
    logits = q @ k.transpose(0, 1, 3, 2) * q.shape[-1] ** -0.5
    maps = np.exp(logits - logits.max(axis=-1, keepdims=True))
    maps /= maps.sum(axis=-1, keepdims=True)
    cls_attention = maps.mean(axis=1)[:, 0, 1:]  # the CLS query's softmax over all 37 tokens, patch columns only
    keys = k.mean(axis=1)[:, 1:]
    features = hidden_states[-2][:, 1:].double().numpy()
    return cls_attention, keys, features


def visionzip_reference(
    scores: np.ndarray, keys: np.ndarray, hidden: np.ndarray, total: int, contextual_ratio: float = 10 / 64
) -> tuple[np.ndarray, np.ndarray]:
    """Kept indices (raster order) and their pre-projector features: dominant tokens as they are, each contextual
    target plus the mean of the tokens its key drew in."""
    contextual = round(total * contextual_ratio)
    dominant = np.argsort(-scores, kind="stable")[: total - contextual]
    features = {int(i): hidden[i] for i in dominant}
    if contextual:
        rest = np.setdiff1d(np.arange(len(scores)), dominant)
        step = max(1, len(rest) // contextual)
        slots = np.arange(0, len(rest), step)[:contextual]
        targets, others = rest[slots], np.delete(rest, slots)
        choice = (unit(keys[others]) @ unit(keys[targets]).T).argmax(axis=1)
        for slot, target in enumerate(targets):
            members = others[choice == slot]
            features[int(target)] = hidden[target] + (hidden[members].mean(axis=0) if len(members) else 0.0)
    kept = np.array(sorted(features))
    return kept, np.stack([features[i] for i in kept])


def vispruner_reference(
    scores: np.ndarray, hidden: np.ndarray, total: int, important_ratio: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Kept indices (raster order) and their pre-projector features: the important tokens by CLS attention, then the
    diverse ones, near-duplicates removed from the rest (in descending attention) a round at a time."""
    important = int(total * important_ratio)
    order = np.argsort(-scores, kind="stable")
    residual = list(order[important:])
    normed = unit(hidden)
    diverse = total - important
    while diverse > 0:
        remove = min(8, len(residual) - diverse)
        if remove <= 0:
            break
        a, b = residual[0::2], residual[1::2]
        similarity = (normed[a] @ normed[b].T).max(axis=1)
        survivors = np.argsort(-similarity, kind="stable")[remove:]
        residual = [a[i] for i in survivors] + b
    kept = np.sort(np.concatenate([order[:important], residual]).astype(int))
    return kept, hidden[kept]


def divprune_reference(projected: np.ndarray, total: int) -> np.ndarray:
    """Kept indices (raster order): the greedy max-min subset by cosine distance of the features the LLM receives."""
    normed = unit(projected)
    distance = 1.0 - normed @ normed.T
    chosen = [int(np.sort(distance, axis=0)[1].argmax())]
    while len(chosen) < total:
        farthest = distance[chosen].min(axis=0)
        farthest[chosen] = -np.inf
        chosen.append(int(farthest.argmax()))
    return np.sort(chosen)


def reference_view(
    model: torch.nn.Module,
    strategy: str,
    total: int,
    options: tuple,
    scores: np.ndarray,
    keys: np.ndarray,
    hidden: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One view's kept indices and the post-projector features of the kept tokens, in raster order."""
    if strategy == "visionzip":
        kept, merged = visionzip_reference(scores, keys, hidden, total, **dict(options))
        return kept, project(model, merged)
    if strategy == "vispruner":
        kept, merged = vispruner_reference(scores, hidden, total, **dict(options))
        return kept, project(model, merged)
    projected = project(model, hidden)
    kept = divprune_reference(projected, total)
    return kept, projected[kept]


def assert_no_near_ties(
    model: torch.nn.Module,
    strategy: str,
    total: int,
    options: tuple,
    scores: np.ndarray,
    keys: np.ndarray,
    hidden: np.ndarray,
) -> None:
    """The reference's selection survives relative noise of 1e-4 on its inputs, ~1000 times float32's rounding: the
    float32 implementation and this float64 reference can only disagree on the index set through a real difference."""
    expected, _ = reference_view(model, strategy, total, options, scores, keys, hidden)
    generator = np.random.default_rng(0)
    for _ in range(4):
        noisy = [x * (1 + 1e-4 * generator.standard_normal(x.shape)) for x in (scores, keys, hidden)]
        assert np.array_equal(reference_view(model, strategy, total, options, *noisy)[0], expected), "near tie"


# ----- the inputs --------------------------------------------------------------------------------------------------


def sharpened(model: torch.nn.Module) -> torch.nn.Module:
    """The model with the scored layer's queries scaled by 16. At the builders' init (std 0.02) the CLS attention is
    nearly uniform: every patch gets 1/37 to within ~1e-5 relative, so rankings would hinge on float32 rounding.
    Sharper queries spread it like a trained CLIP's (about 0.001 to 0.3 here) and leave the keys alone."""
    tower = model.model.vision_tower
    attention = getattr(tower, "vision_model", tower).encoder.layers[-2].self_attn
    with torch.no_grad():
        attention.q_proj.weight.mul_(16.0)
        attention.q_proj.bias.mul_(16.0)
    return model.eval()


def noise_image(seed: int, size: tuple[int, int]) -> Image.Image:
    """Random pixels: every patch differs from every other. A drawn shape on white leaves many white patches that
    differ only by their position embeddings: near ties for the similarity rules."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def config_for(strategy: str, total: int, options: tuple = ()) -> PruningConfig:
    # positions=original numbers each kept token by its unpruned position, which gives away its index.
    return PruningConfig(strategy, keep_tokens=total, positions="original", options=options)


def kept_positions(batch: PrunedBatch, image_token_id: int) -> list[np.ndarray]:
    """Per image of the batch, in order: the kept tokens' indices in the image's unpruned run of placeholders, read
    from position ids (each is the unpruned position of the text token before the run, plus 1, plus the index)."""
    runs = []
    ids, mask, positions = (batch.inputs[name].cpu() for name in ("input_ids", "attention_mask", "position_ids"))
    for row_ids, row_mask, row_positions in zip(ids, mask, positions, strict=True):
        row_ids, row_positions = row_ids[row_mask.bool()], row_positions[row_mask.bool()].numpy()
        is_image = (row_ids == image_token_id).numpy()
        starts = np.flatnonzero(is_image & ~np.r_[False, is_image[:-1]])
        for start in starts:
            stop = start + np.argmin(np.r_[is_image[start:], False])
            runs.append(row_positions[start:stop] - row_positions[start - 1] - 1)
    return runs


@pytest.fixture(scope="module")
def llava() -> Llava:
    model, processor = build_random_llava()
    return Llava(sharpened(model), processor)


@pytest.fixture(scope="module")
def llava_next() -> LlavaNext:
    model, processor = build_random_llava_next()
    return LlavaNext(sharpened(model), processor)


def case_id(case: tuple) -> str:
    strategy, total, options = case
    return "-".join([strategy, str(total), *(f"{name}={value}" for name, value in options)])


# ----- LLaVA-1.5: one view per image -------------------------------------------------------------------------------


@pytest.mark.parametrize(("strategy", "total", "options"), CASES, ids=[case_id(c) for c in CASES])
def test_llava_keeps_the_reference_tokens_and_features(llava: Llava, strategy: str, total: int, options: tuple) -> None:
    """Three images in two prompts (one with two images): each image keeps exactly the reference's index set, and the
    LLM receives the reference's features for them (merged ones included), in raster order."""
    images = [noise_image(1, (64, 56)), noise_image(2, (40, 70)), noise_image(3, (24, 24))]
    prompts = [
        Prompt(user_turn("Describe the pattern.", images[:1]), images[:1], "t/ref/0"),
        Prompt(user_turn("Are the two patterns alike?", images[1:]), images[1:], "t/ref/1"),
    ]
    batch = prune_batch(llava, config_for(strategy, total, options), prompts)
    pixel_values = llava.processor.image_processor(images, return_tensors="pt")["pixel_values"]
    scores, keys, hidden = tower_reference(llava.model, pixel_values)
    features = batch.inputs["mm_encoder_outputs"]["image"].pooler_output
    kept = kept_positions(batch, llava.model.config.image_token_id)
    assert len(features) == len(kept) == 3
    for image in range(3):
        view = (scores[image], keys[image], hidden[image])
        assert_no_near_ties(llava.model, strategy, total, options, *view)
        expected_kept, expected = reference_view(llava.model, strategy, total, options, *view)
        assert kept[image].tolist() == expected_kept.tolist(), f"image {image}"
        np.testing.assert_allclose(features[image].detach().double().numpy(), expected, rtol=1e-4, atol=1e-5)
    assert batch.visual_tokens_kept == [total, 2 * total]


def eight_prompts() -> list[Prompt]:
    """Eight prompts of zero to two images: the conftest's mixed batch of drawn shapes, then the same sizes of noise."""
    wide, tall, small = (64, 56), (40, 70), (24, 24)
    drawn = mixed_prompts(
        draw_image("red", (4, 4, 20, 20), wide),
        draw_image("blue", (10, 30, 30, 50), tall),
        draw_image("green", (2, 2, 10, 10), small),
    )
    noisy = mixed_prompts(noise_image(1, (64, 56)), noise_image(2, (40, 70)), noise_image(3, (24, 24)))
    for i, prompt in enumerate(noisy):  # their own doc keys, so no two prompts share one
        prompt.doc_key = f"t/noise/{i}"
    return drawn + noisy


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_batch_of_eight_keeps_what_each_prompt_keeps_alone(llava: Llava, strategy: str) -> None:
    """Selection is per image: a batch of eight prompts gives every image the features (so the tokens) it gets when
    its prompt runs alone, and every image keeps exactly the budget (a merged token counts once)."""
    total = 10
    prompts = eight_prompts()
    config = PruningConfig(strategy, keep_tokens=total)
    batch = prune_batch(llava, config, prompts)
    alone = []
    for prompt in prompts:
        single = prune_batch(llava, config, [prompt])
        assert single.visual_tokens_kept == [total * len(prompt.images)]
        if prompt.images:
            alone += single.inputs["mm_encoder_outputs"]["image"].pooler_output
    assert batch.visual_tokens_kept == [total * len(prompt.images) for prompt in prompts]
    together = batch.inputs["mm_encoder_outputs"]["image"].pooler_output
    assert len(together) == len(alone) == sum(len(prompt.images) for prompt in prompts)
    for in_batch, by_itself in zip(together, alone, strict=True):
        assert in_batch.shape == (total, by_itself.shape[1])
        assert torch.allclose(in_batch, by_itself, rtol=1e-4, atol=1e-5)


# ----- LLaVA-NeXT: the base view and the crop mosaic, each with the whole budget -------------------------------------


@pytest.mark.parametrize(("strategy", "total", "options"), CASES, ids=[case_id(c) for c in CASES])
def test_llava_next_selects_each_view_like_the_reference(
    llava_next: LlavaNext, strategy: str, total: int, options: tuple
) -> None:
    """A 64 x 56 image: the 6 x 6 base view and the 10 x 12 unpadded mosaic of four crops are each selected on their
    own with the full budget, every token scored by its own crop's CLS attention and compared by its own crop's keys
    and features; a mosaic row's newline stays exactly when the row keeps a token."""
    model = llava_next.model
    image = noise_image(4, (64, 56))
    prompt = Prompt(user_turn("Describe the pattern.", [image]), [image], "t/next/0")
    batch = prune_batch(llava_next, config_for(strategy, total, options), [prompt])
    processed = llava_next.processor.image_processor([image], return_tensors="pt")
    layout = llava_next.layout(processed["image_sizes"][0])
    views = llava_next.num_views(processed["image_sizes"][0])
    scores, keys, hidden = tower_reference(model, processed["pixel_values"][0, :views])
    scores, keys, hidden = scores.reshape(-1), keys.reshape(views * PATCHES, -1), hidden.reshape(views * PATCHES, -1)
    assert [view.grid for view in layout.views] == [(6, 6), (10, 12)]

    expected: dict[int, np.ndarray] = {}  # packed position -> the feature the LLM receives there
    newline = model.model.image_newline.detach().double().numpy()
    for index, view in enumerate(layout.views):
        sources = view.sources.numpy()
        inputs = (scores[sources], keys[sources], hidden[sources])
        assert_no_near_ties(model, strategy, total, options, *inputs)
        kept, features = reference_view(model, strategy, total, options, *inputs)
        positions = view.positions.numpy()
        expected |= dict(zip(positions[kept].tolist(), features, strict=True))
        if index == 1:  # the mosaic: each row of C tokens is followed by its newline
            columns = view.grid[1]
            expected |= {int(positions[row * columns + columns - 1]) + 1: newline for row in np.unique(kept // columns)}
    [kept_packed] = kept_positions(batch, model.config.image_token_id)
    assert kept_packed.tolist() == sorted(expected)
    [features] = batch.inputs["mm_encoder_outputs"]["image"].pooler_output
    wanted = np.stack([expected[position] for position in sorted(expected)])
    np.testing.assert_allclose(features.detach().double().numpy(), wanted, rtol=1e-4, atol=1e-5)
    assert batch.visual_tokens_kept == [2 * total]
    assert batch.newline_tokens_kept == [len(expected) - 2 * total]


# ----- refusals ----------------------------------------------------------------------------------------------------


def test_visionzip_scores_with_cls_attention_only() -> None:
    """VisionZip is defined on the CLS token's attention: another significance is an error, not a silent swap."""
    with pytest.raises(PruningConfigError, match="significance=cls"):
        PruningConfig("visionzip", keep_tokens=4, significance="auto")


@pytest.mark.parametrize("strategy", ["visionzip", "vispruner"])
def test_cls_methods_are_refused_on_a_tower_without_cls(strategy: str) -> None:
    """OneVision's SigLIP tower has no CLS token, so the methods that rank by its attention are refused up front;
    DivPrune, which reads only the features the LLM receives, is not."""
    model, _ = build_random_llava_onevision()
    with pytest.raises(PruningConfigError, match="CLS"):
        LlavaOnevision.check_pruning(model.config, PruningConfig(strategy, keep_tokens=4), "x")
    LlavaOnevision.check_pruning(model.config, PruningConfig("divprune", keep_tokens=4), "x")


# ----- DivPrune on every family: the features the LLM receives ---------------------------------------------------


@pytest.mark.parametrize("name", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_divprune_keeps_the_reference_subset_of_what_the_llm_receives(name: str) -> None:
    """DivPrune reads no attention, so it applies to every family: on the Qwen towers (one view per image, the merged
    tokens in raster order) each image keeps the reference's max-min subset of the features the model's own
    ``get_image_features`` gives, and exactly those features reach the LLM."""
    builder = partial(build_random_qwen_vl, family=name) if name != "qwen3_vl" else build_random_qwen3_vl
    model, processor = builder()
    family = FAMILIES[model.config.model_type](model.eval(), processor)
    images = [noise_image(4, (112, 84)), noise_image(5, (84, 140))]
    prompts = [Prompt(user_turn("Describe it.", [image]), [image], f"t/qwen/{i}") for i, image in enumerate(images)]
    total = 6
    batch = prune_batch(family, PruningConfig("divprune", keep_tokens=total), prompts)
    encoded = processor.image_processor([family.prepare_image(image) for image in images], return_tensors="pt")
    with torch.inference_mode():
        received = model.get_image_features(encoded["pixel_values"], encoded["image_grid_thw"]).pooler_output
    features = batch.inputs["mm_encoder_outputs"]["image"].pooler_output
    for image, expected in enumerate(received):
        projected = expected.double().numpy()
        kept = divprune_reference(projected, total)
        np.testing.assert_allclose(features[image].detach().double().numpy(), projected[kept], rtol=1e-5, atol=1e-6)
    assert batch.visual_tokens_kept == [total, total]

"""llava_onevision_fopru against independent references: the unpruned HF model, a hand-built forward over only the
kept tokens (its own stitching, unpadding, bilinear anyres-max interpolation, selection and newline splicing), and
lmms-eval's own llava_hf through the CLI (lmms-eval's llava_onevision adapter runs the original LLaVA code, not
transformers)."""

from __future__ import annotations

import math
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from lmms_eval.api.instance import Instance
from transformers import AutoProcessor, LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
from transformers.image_processing_utils import select_best_resolution

from conftest import draw_image, llava_hf_simple_prompt, numpy_selection, user_turn
from fopru_eval.core.config import PruningConfigError
from fopru_eval.core.flops import causal_pairs
from fopru_eval.core.layout import AnyresLayout
from fopru_eval.tools.checkpoints.llava_onevision import save_random_llava_onevision
from fopru_model_adapters.base import Prompt
from fopru_model_adapters.llava_onevision import LlavaOnevisionFoPru

# Tiny views are 48 px with 8 px SigLIP patches: 6 x 6 = 36 tokens, no CLS. "anyres_max_9" interpolates a mosaic of
# more than 1.21 * 9 * 36 = 392 tokens down by ratio = sqrt(tokens / (9 * 36)). The mosaics, by hand:
IMAGES = [
    # 64 x 56 (w x h): 2 x 2 crops, 12 x 12; the image is wider, so 12 * 56 / 64 = 10.5 -> 10 rows stay. 120 tokens.
    draw_image("red", (4, 4, 20, 20)),
    # 80 x 40: 1 x 2 crops, 6 x 12, the image's own aspect ratio: nothing unpadded, nothing interpolated.
    draw_image("blue", (30, 20, 60, 50), size=(80, 40)),
    # 300 x 100: 2 x 6 crops, 12 x 36 = 432 tokens, nothing unpadded; interpolated by sqrt(432 / 324) = 1.1547 to
    # 12 // 1.1547 = 10 rows of 36 // 1.1547 = 31 tokens.
    draw_image("green", (20, 20, 120, 80), size=(300, 100)),
    # 130 x 170: 4 x 3 crops, 24 x 18; 18 * 170 / 130 = 23.5 -> 23 rows, padding (24 - 23) // 2 = 0, so all 24 stay;
    # 432 tokens, interpolated like the last to 20 x 15.
    draw_image("yellow", (30, 40, 100, 150), size=(130, 170)),
]
MOSAIC_GRIDS = [(10, 12), (6, 12), (10, 31), (20, 15)]
INTERPOLATED = [False, False, True, True]
QUESTIONS = ["What color is the shape?", "Which shape is in the top left cell?", "Is it red?", "Where is it?"]
BASE_TOKENS = 36


@pytest.fixture(scope="module")
def tiny_onevision(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved random-weight LLaVA-OneVision checkpoint (SigLIP, 36 tokens per view, up to 6 x 6 crops)."""
    return save_random_llava_onevision(tmp_path_factory.mktemp("tiny_llava_onevision"))


@pytest.fixture(scope="module")
def eager(tiny_onevision: Path) -> tuple[LlavaOnevisionForConditionalGeneration, AutoProcessor]:
    """The checkpoint with eager attention, whose attention maps the references read."""
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(tiny_onevision, attn_implementation="eager")
    return model.eval(), AutoProcessor.from_pretrained(tiny_onevision)


def prompts(count: int = 4) -> list[Prompt]:
    return [
        Prompt(user_turn(q, [image]), [image], f"t/test/{i}")
        for i, (q, image) in enumerate(zip(QUESTIONS, IMAGES, strict=True))
    ][:count]


def two_image_prompt() -> Prompt:
    images = [IMAGES[2], IMAGES[0]]
    return Prompt(user_turn("Compare the two pictures.", images), images, "t/test/9")


def extreme_prompts() -> list[Prompt]:
    """A 100:1 wide image, whose mosaic unpads to 0 rows, and a 1:100 tall one, whose 36 mosaic rows unpad to 0
    tokens (newlines only)."""
    images = [draw_image("red", (0, 0, 40, 10), size=(1000, 10)), draw_image("blue", (0, 0, 10, 40), size=(10, 1000))]
    questions = QUESTIONS[: len(images)]
    return [
        Prompt(user_turn(q, [im]), [im], f"t/test/{20 + i}")
        for i, (q, im) in enumerate(zip(questions, images, strict=True))
    ]


def adapter(path: Path, **args) -> LlavaOnevisionFoPru:
    return LlavaOnevisionFoPru(pretrained=str(path), device="cpu", **args)


def hf_inputs(processor, prompts: list[Prompt]) -> dict:
    texts = [p.render(processor) for p in prompts]
    return processor(images=[i for p in prompts for i in p.images], text=texts, padding=True, return_tensors="pt")


# ----- the layout --------------------------------------------------------------------------------------------------


def test_layout_matches_the_processor_and_hand_derived_grids(tiny_onevision: Path) -> None:
    ours = adapter(tiny_onevision, strategy="none")
    processor = ours.processor
    for image, grid in zip(IMAGES, MOSAIC_GRIDS, strict=True):
        size = processor.image_processor(image, return_tensors="pt")["image_sizes"][0]
        layout = ours.family.layout(size)
        assert layout.base.grid == (6, 6) and layout.mosaic.grid == grid
        assert layout.num_packed_tokens == BASE_TOKENS + grid[0] * (grid[1] + 1)
        # The base view comes first, with no newline after it; a newline ends each mosaic row.
        assert layout.base.positions.tolist() == list(range(BASE_TOKENS))
        assert layout.row_markers.tolist() == [BASE_TOKENS + r * (grid[1] + 1) + grid[1] for r in range(grid[0])]
        text = processor.apply_chat_template(user_turn("Hi", [image]), add_generation_prompt=True, tokenize=False)
        ids = processor(images=[image], text=text)["input_ids"][0]
        assert layout.num_packed_tokens == ids.count(ours.model.config.image_token_id)


@pytest.mark.parametrize("markers", [[True, False, False, False, False, True], [False] * 4 + [True, False]])
def test_markers_that_are_not_base_view_then_rows_are_refused(markers: list[bool]) -> None:
    with pytest.raises(ValueError, match="base view|newline"):
        AnyresLayout.from_markers(torch.tensor(markers), (2, 2))


def test_interpolated_scores_are_the_same_blend_as_the_features(tiny_onevision: Path) -> None:
    """Packing is linear: the packed score of every token is its packed "feature" when the features are the scores."""
    ours = adapter(tiny_onevision, strategy="none")
    size = torch.tensor([100, 300])
    views = ours.family.num_views(size)
    scores = torch.rand(views, BASE_TOKENS, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    packed = ours.family.image_scores(scores, size)
    layout = ours.family.layout(size)
    [features], _ = ours.model.model.pack_image_features(
        [scores[..., None]], size[None], image_newline=torch.zeros(1, dtype=torch.float64)
    )
    visual = torch.cat([view.positions for view in layout.views])
    assert torch.equal(packed[visual], features[visual, 0])
    assert bool(packed[layout.row_markers].isnan().all())
    # Interpolated tokens are blends: most are none of the tower scores.
    assert bool((~torch.isin(packed[layout.mosaic.sources], scores)).float().mean() > 0.5)


# ----- the reference: everything by hand from eager attention maps and hidden states -----------------------------


def bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) weights of 1-D bilinear resampling with half-pixel centres (align_corners=False)."""
    weights = np.zeros((size_out, size_in))
    for i in range(size_out):
        source = max((i + 0.5) * size_in / size_out - 0.5, 0.0)
        low = min(int(source), size_in - 1)
        high, fraction = min(low + 1, size_in - 1), source - low
        weights[i, low] += 1 - fraction
        weights[i, high] += fraction
    return weights


def reference_image_tokens(
    model: LlavaOnevisionForConditionalGeneration,
    pixels: torch.Tensor,
    image_size: torch.Tensor,
    strategy: str,
    ratio: float | None,
    tokens: int | None,
) -> tuple[torch.Tensor, list[int], int, int, int]:
    """One image's kept embeddings in LLM order, their offsets in the unpruned packed image, the visual and newline
    tokens kept, and the unpruned image's packed tokens. Crop stitching, unpadding, anyres-max interpolation and
    newline placement are derived here from LLaVA-OneVision's description, not taken from the model."""
    config, vision = model.config, model.config.vision_config
    side = vision.image_size // vision.patch_size
    height, width = image_size.tolist()
    best_height, best_width = select_best_resolution((height, width), config.image_grid_pinpoints)
    crop_rows, crop_cols = best_height // vision.image_size, best_width // vision.image_size
    views = 1 + crop_rows * crop_cols
    tower = model.model.vision_tower(pixels[:views], output_attentions=True, output_hidden_states=True)
    # Each view's own attention map in the layer whose output the LLM reads (no CLS token to drop).
    layer = len(tower.attentions) + config.vision_feature_layer
    attention = tower.attentions[layer].double().mean(dim=1).numpy()
    significance = []
    for view in attention:
        column, row = view.mean(axis=0), view.mean(axis=1)
        significance.append(column if column.var() > row.var() else row)
    significance = np.stack(significance)[..., None]  # a channel axis, to resample alongside the features
    features = model.model.multi_modal_projector(tower.hidden_states[config.vision_feature_layer]).double().numpy()

    def stitch(crops):  # (crops, side * side, channels) -> the (crop_rows * side, crop_cols * side, channels) mosaic
        grid = crops.reshape(crop_rows, crop_cols, side, side, -1).swapaxes(1, 2)
        return grid.reshape(crop_rows * side, crop_cols * side, -1)

    # Unpadding: drop the rows (or columns) of the mosaic that only covered the padding around the resized image.
    rows, cols = crop_rows * side, crop_cols * side
    if width / height > cols / rows:
        padding = (rows - int(round(height * (cols / width), 7))) // 2
        window = (slice(padding, rows - padding), slice(None))
    else:
        padding = (cols - int(round(width * (rows / height), 7))) // 2
        window = (slice(None), slice(padding, cols - padding))
    mosaic = np.concatenate([stitch(significance[1:]), stitch(features[1:])], axis=-1)[window]
    # anyres_max_9: a mosaic of more than 1.21 x 9 views' tokens shrinks by `shrink` a side, bilinearly.
    shrink = math.sqrt(mosaic.shape[0] * mosaic.shape[1] / (9 * side * side))
    if shrink > 1.1:
        new_rows, new_cols = int(mosaic.shape[0] // shrink), int(mosaic.shape[1] // shrink)
        row_weights, col_weights = (
            bilinear_matrix(mosaic.shape[0], new_rows),
            bilinear_matrix(mosaic.shape[1], new_cols),
        )
        mosaic = np.einsum("ri,ijc,sj->rsc", row_weights, mosaic, col_weights)
    mosaic_significance, mosaic_features = mosaic[..., 0], torch.from_numpy(mosaic[..., 1:]).float()
    mosaic_rows, mosaic_cols = mosaic_significance.shape

    base_features = torch.from_numpy(features[0]).float()
    base_kept = numpy_selection(significance[0, :, 0].reshape(side, side), strategy, ratio, tokens)
    mosaic_kept = numpy_selection(mosaic_significance, strategy, ratio, tokens)
    newline = model.model.image_newline.detach()[None]
    pieces, offsets, newlines = [base_features[torch.from_numpy(base_kept)]], base_kept.tolist(), 0
    for row in range(mosaic_rows):
        kept_cols = mosaic_kept[mosaic_kept // mosaic_cols == row] % mosaic_cols if mosaic_cols else np.arange(0)
        # The newline rule: a row's newline stays if the row keeps anything, or has nothing it could keep.
        if kept_cols.size or mosaic_cols == 0:
            pieces += [mosaic_features[row][torch.from_numpy(kept_cols)], newline]
            start = side * side + row * (mosaic_cols + 1)
            offsets += (start + kept_cols).tolist() + [start + mosaic_cols]
            newlines += 1
    packed = side * side + mosaic_rows * (mosaic_cols + 1)
    return torch.cat(pieces), offsets, len(base_kept) + len(mosaic_kept), newlines, packed


def reference_logits(
    model: LlavaOnevisionForConditionalGeneration,
    processor,
    prompt: Prompt,
    strategy: str,
    ratio: float | None = None,
    tokens: int | None = None,
    original_positions: bool = False,
    continuation: list[int] | None = None,
) -> tuple[torch.Tensor, list[int], list[int]]:
    """Logits of the language model run on hand-spliced inputs_embeds (each kept token at its unpruned position with
    ``original_positions``); and the visual and newline tokens kept per image."""
    inputs = hf_inputs(processor, [prompt])
    ids = inputs["input_ids"][0].tolist() + (continuation or [])
    embed = model.get_input_embeddings()
    pieces, positions, visual, newlines = [], [], [], []
    with torch.no_grad():
        index = 0
        while index < len(ids):
            if ids[index] != model.config.image_token_id:
                pieces.append(embed(torch.tensor([ids[index]])))
                positions.append(index)
                index += 1
                continue
            image = len(visual)
            kept, offsets, kept_visual, kept_newlines, span = reference_image_tokens(
                model, inputs["pixel_values"][image], inputs["image_sizes"][image], strategy, ratio, tokens
            )
            # The chat template puts a sample's images side by side: each one's span is its own packed length.
            assert set(ids[index : index + span]) == {model.config.image_token_id}
            pieces.append(kept)
            positions += [index + offset for offset in offsets]
            visual.append(kept_visual)
            newlines.append(kept_newlines)
            index += span
        position_ids = torch.tensor([positions]) if original_positions else None
        hidden = model.model.language_model(inputs_embeds=torch.cat(pieces)[None], position_ids=position_ids)
        return model.lm_head(hidden.last_hidden_state), visual, newlines


# ----- exactness ---------------------------------------------------------------------------------------------------


BUDGETS = [
    ("rank", {"keep_ratio": 0.25}),
    ("rank", {"keep_tokens": 20}),
    ("row", {"keep_ratio": 0.5}),
    ("row", {"keep_tokens": 40}),
]


@pytest.mark.parametrize(("strategy", "budget"), BUDGETS)
def test_pruned_run_equals_a_reference_over_only_the_kept_tokens(
    tiny_onevision: Path, eager: tuple, strategy: str, budget: dict
) -> None:
    """On interpolated and plain mosaics, two images side by side, and extreme aspect ratios whose mosaics unpad to
    nothing."""
    ours = adapter(tiny_onevision, strategy=strategy, **budget)
    for prompt in [*prompts(), two_image_prompt(), *extreme_prompts()]:
        with torch.inference_mode():
            batch = ours.prepare([prompt])
            logits = ours.model(**batch.inputs).logits
        expected, visual, newlines = reference_logits(
            *eager, prompt, strategy, budget.get("keep_ratio"), budget.get("keep_tokens")
        )
        assert logits.shape == expected.shape, prompt.doc_key
        torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
        # Counts are per sample, summed over its images.
        assert batch.visual_tokens_kept == [sum(visual)] and batch.newline_tokens_kept == [sum(newlines)]


def test_the_reference_sees_what_the_unpruned_model_sees(tiny_onevision: Path, eager: tuple) -> None:
    """The hand-built reference at strategy=none equals the HF model: its stitching and interpolation are right."""
    model, processor = eager
    for prompt in [*prompts(), two_image_prompt(), *extreme_prompts()]:
        expected, _, _ = reference_logits(model, processor, prompt, "none")
        with torch.no_grad():
            logits = model(**hf_inputs(processor, [prompt])).logits
        torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


# ----- counts ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "budget", "kept", "newlines"),
    [
        # floor(N / 4) per view: base 9; mosaics 30, 18, 77, 75.
        ("rank", {"keep_ratio": 0.25}, [9 + 30, 9 + 18, 9 + 77, 9 + 75], None),
        # Whole rows at 0.5: base 3 of 6 rows (18 tokens); mosaic 5 of 10 rows of 12, 3 of 6 of 12, 5 of 10 of 31,
        # 10 of 20 of 15.
        ("row", {"keep_ratio": 0.5}, [18 + 60, 18 + 36, 18 + 155, 18 + 150], [5, 3, 5, 10]),
        # Whole rows within k = 40 tokens per view: base 6 rows of 6; mosaic rows of 12, 12, 31, 15 tokens.
        ("row", {"keep_tokens": 40}, [36 + 36, 36 + 36, 36 + 31, 36 + 30], [3, 3, 1, 2]),
        ("none", {}, [156, 108, 346, 336], [10, 6, 10, 20]),
    ],
)
def test_kept_counts_per_view_on_rectangular_odd_and_interpolated_grids(
    tiny_onevision: Path, strategy: str, budget: dict, kept: list[int], newlines: list[int] | None
) -> None:
    ours = adapter(tiny_onevision, strategy=strategy, **budget)
    with torch.inference_mode():
        batch = ours.prepare(prompts())
    assert batch.visual_tokens_kept == kept
    assert batch.visual_tokens_total == [BASE_TOKENS + rows * cols for rows, cols in MOSAIC_GRIDS]
    assert batch.newline_tokens_total == [rows for rows, _ in MOSAIC_GRIDS]
    if newlines is not None:
        assert batch.newline_tokens_kept == newlines
    # The LLM sees exactly the kept visual tokens and kept newlines of each image, besides the text.
    for i, prompt in enumerate(prompts()):
        unpruned = hf_inputs(ours.processor, [prompt])["input_ids"].shape[1]
        dropped = batch.visual_tokens_total[i] - kept[i] + batch.newline_tokens_total[i] - batch.newline_tokens_kept[i]
        assert batch.input_tokens[i] == unpruned - dropped


def test_several_images_per_sample_add_up(tiny_onevision: Path) -> None:
    ours = adapter(tiny_onevision, strategy="rank", keep_ratio=0.25)
    with torch.inference_mode():
        [first, second] = [ours.prepare([p]) for p in (prompts()[2], prompts()[0])]
        both = ours.prepare([two_image_prompt()])
    assert both.visual_tokens_kept == [first.visual_tokens_kept[0] + second.visual_tokens_kept[0]]
    assert both.visual_tokens_total == [first.visual_tokens_total[0] + second.visual_tokens_total[0]]
    assert both.newline_tokens_kept == [first.newline_tokens_kept[0] + second.newline_tokens_kept[0]]


def test_prefill_flops_count_every_siglip_view_by_hand(tiny_onevision: Path) -> None:
    """Per view: the patch embedding, every SigLIP block over the 36 patches (no CLS), the two-layer projector; then
    the Qwen2 LLM over the tokens fed."""
    ours = adapter(tiny_onevision, strategy="none")
    with torch.inference_mode():
        batch = ours.prepare(prompts()[2:3])
    vision, text = ours.model.config.vision_config, ours.model.config.text_config
    n, d, inner = BASE_TOKENS, vision.hidden_size, vision.intermediate_size
    block = 2 * n * d * 4 * d + 2 * 2 * n * n * d + 2 * 2 * n * d * inner
    per_view = 2 * n * 3 * 8 * 8 * d + vision.num_hidden_layers * block + 2 * n * d * text.hidden_size
    per_view += 2 * n * text.hidden_size**2
    tokens, hidden, inner_text = batch.input_tokens[0], text.hidden_size, text.intermediate_size
    llm_block = (
        2 * tokens * hidden * 4 * hidden + 2 * 2 * causal_pairs(tokens) * hidden + 3 * 2 * tokens * hidden * inner_text
    )
    llm = text.num_hidden_layers * llm_block + 2 * hidden * text.vocab_size
    assert batch.prefill_flops == [13 * per_view + llm]  # 300 x 100: the base view and 2 x 6 crops


# ----- batching ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["rank", "row", "random", "none"])
def test_a_batch_of_eight_mixed_sizes_equals_one_by_one(tiny_onevision: Path, strategy: str) -> None:
    args = {"strategy": strategy} if strategy == "none" else {"strategy": strategy, "keep_ratio": 0.25}
    ours = adapter(tiny_onevision, **args)
    extra = Prompt(user_turn("Where?", [IMAGES[3]]), [IMAGES[3]], "t/test/30")
    batch = [*prompts(), two_image_prompt(), *extreme_prompts(), extra]
    assert len(batch) == 8
    gen = {"max_new_tokens": 6, "temperature": 0}
    one_by_one = [ours._generate([p], gen)[0] for p in batch]
    batched = ours._generate(batch, gen)
    assert [a.text for a in batched] == [a.text for a in one_by_one]
    assert [a.token_counts.to_dict() for a in batched] == [a.token_counts.to_dict() for a in one_by_one]


def test_original_positions_keep_each_token_where_it_was(tiny_onevision: Path, eager: tuple) -> None:
    compact = adapter(tiny_onevision, strategy="rank", keep_ratio=0.25)
    original = adapter(tiny_onevision, strategy="rank", keep_ratio=0.25, positions="original")
    for prompt in [prompts()[3], two_image_prompt()]:
        with torch.inference_mode():
            original_logits = original.model(**original.prepare([prompt]).inputs).logits
            compact_logits = compact.model(**compact.prepare([prompt]).inputs).logits
        expected, _, _ = reference_logits(*eager, prompt, "rank", 0.25, original_positions=True)
        torch.testing.assert_close(original_logits, expected, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(original_logits, compact_logits, atol=1e-4)


@pytest.mark.parametrize(
    "args", [{"strategy": "none"}, {"strategy": "row", "keep_ratio": 0.5, "positions": "original"}]
)
def test_loglikelihood_is_the_mean_token_loss_of_the_continuation(
    tiny_onevision: Path, eager: tuple, args: dict
) -> None:
    ours = adapter(tiny_onevision, batch_size=3, **args)
    batch = [*prompts()[2:4], two_image_prompt()]
    ours.task_dict = {"t": {"test": [{"q": p.messages[0]["content"][-1]["text"], "images": p.images} for p in batch]}}
    requests = [
        Instance(
            "loglikelihood",
            (doc["q"], " red", lambda doc: doc["images"], i, "t", "test"),
            idx=0,
            metadata={"task": "t", "doc_id": i, "repeats": 1},
        )
        for i, doc in enumerate(ours.task_dict["t"]["test"])
    ]
    results = ours.loglikelihood(requests)
    target = ours.tokenizer.encode(" red", add_special_tokens=False)
    for result, prompt in zip(results, batch, strict=True):
        logits, _, _ = reference_logits(
            *eager,
            llava_hf_simple_prompt(eager[1], prompt),
            args["strategy"],
            args.get("keep_ratio"),
            None,
            "positions" in args,
            target,
        )
        predicted = logits[0, -len(target) - 1 : -1]
        loss = torch.nn.functional.cross_entropy(predicted, torch.tensor(target)).item()
        assert result.text[0] == pytest.approx(loss, rel=1e-4)
        assert result.text[1] == bool((predicted.argmax(-1) == torch.tensor(target)).all())


# ----- errors ------------------------------------------------------------------------------------------------------


def test_cls_significance_is_refused_on_siglip_before_weights_load(tiny_onevision: Path) -> None:
    with mock.patch.object(
        LlavaOnevisionForConditionalGeneration, "from_pretrained", side_effect=AssertionError("loaded")
    ):
        with pytest.raises(PruningConfigError, match="significance=cls .* LLaVA-OneVision's vision tower has no CLS"):
            adapter(tiny_onevision, strategy="rank", keep_ratio=0.5, significance="cls")


@pytest.mark.parametrize(
    ("checkpoint", "message"),
    [
        ("llava", "'llava' checkpoint; llava_onevision_fopru wraps LlavaOnevisionForConditionalGeneration"),
        ("clip", "'clip_vision_model' vision tower; llava_onevision_fopru supports SigLIP vision towers"),
        ("default", "vision_feature_select_strategy='default' is not supported; accepted values: full"),
    ],
)
def test_a_checkpoint_that_is_not_a_siglip_onevision_is_refused_before_weights_load(
    tiny_llava: Path, tmp_path: Path, checkpoint: str, message: str
) -> None:
    configs = {
        "clip": lambda: LlavaOnevisionConfig(vision_config={"model_type": "clip_vision_model"}),
        "default": lambda: LlavaOnevisionConfig(vision_feature_select_strategy="default"),
    }
    path = tiny_llava if checkpoint == "llava" else tmp_path
    if checkpoint != "llava":
        configs[checkpoint]().save_pretrained(tmp_path)
    with mock.patch.object(
        LlavaOnevisionForConditionalGeneration, "from_pretrained", side_effect=AssertionError("loaded")
    ):
        with pytest.raises(ValueError, match=message):
            adapter(path, strategy="rank", keep_ratio=0.5)


# ----- the lmms-eval CLI -------------------------------------------------------------------------------------------


def test_make_random_saves_a_checkpoint_the_adapter_accepts(tmp_path: Path) -> None:
    from fopru_eval.tools.cli import main

    assert main(["make-random", "llava_onevision_fopru", str(tmp_path / "checkpoint")]) == 0
    LlavaOnevisionFoPru.family_class.check_checkpoint(str(tmp_path / "checkpoint"), "llava_onevision_fopru")

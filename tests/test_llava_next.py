"""llava_next_fopru against independent references: the unpruned HF model, a hand-built forward over only the kept
tokens (its own unpadding, selection and newline splicing), and lmms-eval's own llava_hf through the CLI."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
from lmms_eval.api.instance import Instance
from transformers import AutoProcessor, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration
from transformers.image_processing_utils import select_best_resolution

from conftest import (
    draw_image,
    greedy_decode_by_hand,
    llava_hf_simple_prompt,
    lmms_eval,
    numpy_selection,
    results_of,
    user_turn,
)
from fopru_eval.core.config import PruningConfigError
from fopru_eval.core.layout import NEWLINE, AnyresLayout
from fopru_eval.families import keep_image
from fopru_eval.tools.checkpoints.llava_next import save_random_llava_next
from fopru_model_adapters.base import Prompt
from fopru_model_adapters.llava_next import LlavaNextFoPru

# Tiny crops are 48 px with 8 px patches: 6 x 6 = 36 tokens per tower view. The unpadded mosaics, by hand:
IMAGES = [
    # 64 x 56 (w x h): 2 x 2 crops, a 12 x 12 mosaic; the image is wider, so 12 * 56 / 64 = 10.5 -> 10 rows stay.
    draw_image("red", (4, 4, 20, 20)),
    # 80 x 40: 1 x 2 crops, 6 x 12, the same aspect ratio as the image: nothing to unpad.
    draw_image("blue", (30, 20, 60, 50), size=(80, 40)),
    # 40 x 70: 2 x 1 crops, 12 x 6; 6 * 70 / 40 = 10.5 -> 10 rows stay.
    draw_image("green", (10, 30, 30, 50), size=(40, 70)),
    # 200 x 30: 1 x 3 crops, 6 x 18; 18 * 30 / 200 = 2.7 -> 2 rows stay.
    draw_image("yellow", (50, 5, 150, 25), size=(200, 30)),
]
MOSAIC_GRIDS = [(10, 12), (6, 12), (10, 6), (2, 18)]
QUESTIONS = ["What color is the shape?", "Which shape is in the top left cell?", "Is it red?", "Where is it?"]
BASE_TOKENS = 36


@pytest.fixture(scope="module")
def tiny_next(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved random-weight LLaVA-NeXT-architecture checkpoint (36 tokens per view, up to 3 x 1 or 2 x 2 crops)."""
    return save_random_llava_next(tmp_path_factory.mktemp("tiny_llava_next"))


@pytest.fixture(scope="module")
def eager(tiny_next: Path) -> tuple[LlavaNextForConditionalGeneration, AutoProcessor]:
    """The checkpoint with eager attention, whose attention maps the references read."""
    model = LlavaNextForConditionalGeneration.from_pretrained(tiny_next, attn_implementation="eager").eval()
    return model, AutoProcessor.from_pretrained(tiny_next)


def prompts(count: int = 4) -> list[Prompt]:
    return [
        Prompt(user_turn(q, [image]), [image], f"t/test/{i}")
        for i, (q, image) in enumerate(zip(QUESTIONS, IMAGES, strict=True))
    ][:count]


def two_image_prompt() -> Prompt:
    images = [IMAGES[3], IMAGES[0]]
    return Prompt(user_turn("Compare the two pictures.", images), images, "t/test/9")


def adapter(path: Path, **args) -> LlavaNextFoPru:
    return LlavaNextFoPru(pretrained=str(path), device="cpu", **args)


def hf_inputs(processor, prompts: list[Prompt]) -> dict:
    texts = [p.render(processor) for p in prompts]
    return processor(images=[i for p in prompts for i in p.images], text=texts, padding=True, return_tensors="pt")


# ----- the pure layout core ---------------------------------------------------------------------------------------


def test_layout_reads_base_view_mosaic_rows_and_newlines() -> None:
    # A 2 x 2 base view, then a 2 x 3 mosaic whose tokens come from tower tokens 10.. and 20..
    sources = torch.tensor([0, 1, 2, 3, 10, 11, 12, NEWLINE, 20, 21, 22, NEWLINE])
    layout = AnyresLayout.from_sources(sources, (2, 2))
    assert layout.base.grid == (2, 2) and layout.mosaic.grid == (2, 3)
    assert layout.mosaic.positions.tolist() == [4, 5, 6, 8, 9, 10]
    assert layout.mosaic.sources.tolist() == [10, 11, 12, 20, 21, 22]
    assert (layout.num_visual_tokens, layout.num_newlines, layout.num_packed_tokens) == (10, 2, 12)
    # Mosaic row 0 keeps two tokens, row 1 none: row 0's newline (position 7) stays, row 1's goes.
    positions, newlines = layout.kept_positions(torch.tensor([1]), torch.tensor([0, 2]))
    assert positions.tolist() == [1, 4, 6, 7] and newlines == 1
    positions, newlines = layout.kept_positions(torch.arange(4), torch.arange(6))
    assert positions.tolist() == list(range(12)) and newlines == 2


@pytest.mark.parametrize("newlines", [0, 3])
def test_a_mosaic_unpadded_to_nothing_leaves_the_base_view_and_keeps_its_newlines(newlines: int) -> None:
    """Very wide images unpad to 0 mosaic rows, very tall ones to rows 0 tokens wide (newlines only): the model
    answers them, with every newline, so every selection keeps them."""
    layout = AnyresLayout.from_sources(torch.tensor([0, 1, 2, 3] + [NEWLINE] * newlines), (2, 2))
    assert layout.mosaic is None and [view.grid for view in layout.views] == [(2, 2)]
    assert (layout.num_visual_tokens, layout.num_newlines, layout.num_packed_tokens) == (4, newlines, 4 + newlines)
    positions, kept_newlines = layout.kept_positions(torch.tensor([2]))
    assert positions.tolist() == [2, *range(4, 4 + newlines)] and kept_newlines == newlines


@pytest.mark.parametrize(
    "sources",
    [
        [1, 0, 2, 3, 10, 11, NEWLINE],  # the base view out of order
        [0, 1, 2, 3, 10, 11, NEWLINE, 20, 21],  # the last row has no newline
        [0, 1, 2, 3, 10, NEWLINE, 20, 21, NEWLINE],  # rows of different lengths
        [0, 1, 2, 3, 10, 11, 12],  # mosaic tokens and no newline at all
    ],
)
def test_a_packed_sequence_that_is_not_base_view_then_rows_is_refused(sources: list[int]) -> None:
    with pytest.raises(ValueError, match="base view|newline|rows"):
        AnyresLayout.from_sources(torch.tensor(sources), (2, 2))


def test_layout_matches_the_processor_and_hand_derived_unpadded_grids(tiny_next: Path) -> None:
    ours = adapter(tiny_next, strategy="none")
    processor = ours.processor
    for image, grid in zip(IMAGES, MOSAIC_GRIDS, strict=True):
        size = processor.image_processor(image, return_tensors="pt")["image_sizes"][0]
        layout = ours.family.layout(size)
        assert layout.base.grid == (6, 6) and layout.mosaic.grid == grid
        assert layout.num_packed_tokens == BASE_TOKENS + grid[0] * (grid[1] + 1)
        text = processor.apply_chat_template(user_turn("Hi", [image]), add_generation_prompt=True, tokenize=False)
        ids = processor(images=[image], text=text)["input_ids"][0]
        assert layout.num_packed_tokens == ids.count(ours.model.config.image_token_id)
    # 80 x 40 has two crops side by side and nothing unpadded: mosaic token (r, c) is patch (r, c % 6) of crop
    # 1 + c // 6, i.e. tower token (1 + c // 6) * 36 + r * 6 + c % 6.
    layout = ours.family.layout(torch.tensor([40, 80]))
    r, c = np.divmod(np.arange(72), 12)
    assert layout.mosaic.sources.tolist() == ((1 + c // 6) * 36 + r * 6 + c % 6).tolist()


# ----- the reference: everything by hand from eager attention maps and hidden states -----------------------------


def reference_image_tokens(
    model: LlavaNextForConditionalGeneration,
    pixels: torch.Tensor,
    image_size: torch.Tensor,
    strategy: str,
    ratio: float | None,
    tokens: int | None,
) -> tuple[torch.Tensor, list[int], int, int]:
    """One image's kept embeddings in LLM order, their offsets in the unpruned packed image, and the visual and
    newline tokens kept. Unpadding, crop stitching and newline placement are derived here from the paper's and
    LLaVA-NeXT's description, not taken from the model."""
    vision = model.config.vision_config
    side = vision.image_size // vision.patch_size
    height, width = image_size.tolist()
    best_height, best_width = select_best_resolution((height, width), model.config.image_grid_pinpoints)
    crop_rows, crop_cols = best_height // vision.image_size, best_width // vision.image_size
    views = 1 + crop_rows * crop_cols
    tower = model.model.vision_tower(pixels[:views], output_attentions=True, output_hidden_states=True)
    # Each view's own attention map at the feature layer (hidden_states[-2] is the output of layer L - 2).
    attention = tower.attentions[len(tower.attentions) - 2].double().mean(dim=1)[:, 1:, 1:].numpy()
    significance = []
    for view in attention:
        column, row = view.mean(axis=0), view.mean(axis=1)
        significance.append(column if column.var() > row.var() else row)
    significance = np.stack(significance)
    features = model.model.multi_modal_projector(tower.hidden_states[-2][:, 1:])

    def stitch(crops):  # (crops, side * side, ...) -> the (crop_rows * side, crop_cols * side, ...) mosaic
        grid = crops.reshape(crop_rows, crop_cols, side, side, *crops.shape[2:]).swapaxes(1, 2)
        return grid.reshape(crop_rows * side, crop_cols * side, *crops.shape[2:])

    # Unpadding: drop the rows (or columns) of the mosaic that only covered the padding around the resized image.
    rows, cols = crop_rows * side, crop_cols * side
    if width / height > cols / rows:
        padding = (rows - int(round(height * (cols / width), 7))) // 2
        window = (slice(padding, rows - padding), slice(None))
    else:
        padding = (cols - int(round(width * (rows / height), 7))) // 2
        window = (slice(None), slice(padding, cols - padding))
    mosaic_significance = stitch(significance[1:])[window]
    mosaic_features = stitch(features[1:])[window]
    mosaic_rows, mosaic_cols = mosaic_significance.shape

    base_kept = numpy_selection(significance[0].reshape(side, side), strategy, ratio, tokens)
    mosaic_kept = numpy_selection(mosaic_significance, strategy, ratio, tokens)
    pieces, offsets, newlines = [features[0][torch.from_numpy(base_kept)]], base_kept.tolist(), 0
    for row in range(mosaic_rows):
        kept_cols = mosaic_kept[mosaic_kept // mosaic_cols == row] % mosaic_cols
        # The newline rule: a row's newline stays if the row keeps anything, or has nothing it could keep.
        if kept_cols.size or mosaic_cols == 0:
            pieces += [mosaic_features[row][torch.from_numpy(kept_cols)], model.model.image_newline[None]]
            start = side * side + row * (mosaic_cols + 1)
            offsets += (start + kept_cols).tolist() + [start + mosaic_cols]
            newlines += 1
    return torch.cat(pieces), offsets, len(base_kept) + len(mosaic_kept), newlines


def reference_logits(
    model: LlavaNextForConditionalGeneration,
    processor,
    prompt: Prompt,
    strategy: str,
    ratio: float | None = None,
    tokens: int | None = None,
    original_positions: bool = False,
    continuation: list[int] | None = None,
) -> tuple[torch.Tensor, list[int], list[int]]:
    """Logits of the language model run on hand-spliced inputs_embeds; and the visual and newline tokens kept per
    image."""
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
            kept, offsets, kept_visual, kept_newlines = reference_image_tokens(
                model, inputs["pixel_values"][image], inputs["image_sizes"][image], strategy, ratio, tokens
            )
            span = 1
            while index + span < len(ids) and ids[index + span] == model.config.image_token_id:
                span += 1
            pieces.append(kept)
            positions += [index + offset for offset in offsets]
            visual.append(kept_visual)
            newlines.append(kept_newlines)
            index += span
        position_ids = torch.tensor([positions]) if original_positions else None
        hidden = model.model.language_model(inputs_embeds=torch.cat(pieces)[None], position_ids=position_ids)
        return model.lm_head(hidden.last_hidden_state), visual, newlines


# ----- exactness ---------------------------------------------------------------------------------------------------


def test_keep_ratio_one_equals_none(tiny_next: Path) -> None:
    full = adapter(tiny_next, strategy="rank", keep_ratio=1.0)
    none = adapter(tiny_next, strategy="none")
    with torch.inference_mode():
        assert torch.equal(
            full.model(**full.prepare(prompts()).inputs).logits, none.model(**none.prepare(prompts()).inputs).logits
        )


BUDGETS = [
    ("rank", {"keep_ratio": 0.25}),
    ("rank", {"keep_tokens": 20}),
    ("row", {"keep_ratio": 0.5}),
    ("row", {"keep_ratio": 0.34}),
    ("row", {"keep_tokens": 20}),
]


def extreme_prompts() -> list[Prompt]:
    """A 100:1 wide image, whose mosaic unpads to 0 rows, and a 1:100 tall one, whose mosaic rows unpad to 0 tokens
    (newlines only)."""
    images = [draw_image("red", (0, 0, 40, 10), size=(1000, 10)), draw_image("blue", (0, 0, 10, 40), size=(10, 1000))]
    questions = QUESTIONS[: len(images)]
    return [
        Prompt(user_turn(q, [im]), [im], f"t/test/{20 + i}")
        for i, (q, im) in enumerate(zip(questions, images, strict=True))
    ]


@pytest.mark.parametrize(("strategy", "budget"), BUDGETS)
def test_pruned_run_equals_a_reference_over_only_the_kept_tokens(
    tiny_next: Path, eager: tuple, strategy: str, budget: dict
) -> None:
    """Extreme aspect ratios included: their mosaics unpad to nothing."""
    ours = adapter(tiny_next, strategy=strategy, **budget)
    for prompt in [*prompts(), *extreme_prompts()]:
        with torch.inference_mode():
            batch = ours.prepare([prompt])
            logits = ours.model(**batch.inputs).logits
        expected, visual, newlines = reference_logits(
            *eager, prompt, strategy, budget.get("keep_ratio"), budget.get("keep_tokens")
        )
        assert logits.shape == expected.shape
        torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
        assert batch.visual_tokens_kept == visual and batch.newline_tokens_kept == newlines


def test_images_whose_mosaic_unpads_to_nothing_answer_as_the_hf_model(tiny_next: Path) -> None:
    ours = adapter(tiny_next, strategy="none", batch_size=3)
    model = LlavaNextForConditionalGeneration.from_pretrained(tiny_next).eval()
    processor = AutoProcessor.from_pretrained(tiny_next)
    batch = [*extreme_prompts(), prompts(1)[0]]
    with torch.inference_mode():
        inputs = hf_inputs(processor, batch)
        assert torch.equal(ours.model(**ours.prepare(batch).inputs).logits, model(**inputs).logits)
        expected = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=ours.eot_token_id)
    answers = ours._generate(batch, {"max_new_tokens": 8, "temperature": 0})
    texts = processor.tokenizer.batch_decode(expected[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert [a.text for a in answers] == texts
    # Only the base view's 36 tokens are visual; the tall image's 18 newlines end rows with no tokens.
    assert [(a.token_counts.visual_tokens_total, a.token_counts.newline_tokens_total) for a in answers[:2]] == [
        (BASE_TOKENS, 0),
        (BASE_TOKENS, 18),
    ]


def test_several_images_per_doc_equal_the_reference(tiny_next: Path, eager: tuple) -> None:
    ours = adapter(tiny_next, strategy="rank", keep_ratio=0.25)
    prompt = two_image_prompt()
    with torch.inference_mode():
        batch = ours.prepare([prompt])
        logits = ours.model(**batch.inputs).logits
    expected, visual, newlines = reference_logits(*eager, prompt, "rank", 0.25)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    # Per image: 9 of the base view's 36, plus a quarter of the mosaic (2 x 18, then 10 x 12).
    assert visual == [9 + 9, 9 + 30] and batch.visual_tokens_kept == [sum(visual)]
    assert batch.visual_tokens_total == [36 + 36 + 36 + 120] and batch.newline_tokens_kept == [sum(newlines)]


# ----- budgets and the newline rule on the real, rectangular grids -------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "budget", "kept", "newlines"),
    [
        # Per view floor(N * r): base 36 -> 9; mosaics 120, 72, 60, 36 -> 30, 18, 15, 9.
        ("rank", {"keep_ratio": 0.25}, [39, 27, 24, 18], None),
        # At most k per view: 20 of the base view plus 20 of the mosaic.
        ("rank", {"keep_tokens": 20}, [40, 40, 40, 40], None),
        # floor(R * r) rows per view: base 3 of 6 rows; mosaics 5 of 10, 3 of 6, 5 of 10, 1 of 2 rows.
        ("row", {"keep_ratio": 0.5}, [18 + 60, 18 + 36, 18 + 30, 18 + 18], [5, 3, 5, 1]),
        # Whole rows within k = 20 tokens per view: base 3 rows of 6; mosaic rows of 12, 12, 6, 18 tokens.
        ("row", {"keep_tokens": 20}, [18 + 12, 18 + 12, 18 + 18, 18 + 18], [1, 1, 3, 1]),
        ("none", {}, [156, 108, 96, 72], [10, 6, 10, 2]),
    ],
)
def test_kept_counts_per_view_on_the_rectangular_unpadded_grids(
    tiny_next: Path, strategy: str, budget: dict, kept: list[int], newlines: list[int] | None
) -> None:
    ours = adapter(tiny_next, strategy=strategy, **budget)
    with torch.inference_mode():
        batch = ours.prepare(prompts())
    assert batch.visual_tokens_kept == kept
    assert batch.visual_tokens_total == [BASE_TOKENS + rows * cols for rows, cols in MOSAIC_GRIDS]
    assert batch.newline_tokens_total == [rows for rows, _ in MOSAIC_GRIDS]
    if newlines is not None:
        assert batch.newline_tokens_kept == newlines
    # The LLM sees exactly the kept visual tokens and kept newlines of each image, besides the text.
    processor = ours.processor
    for i, prompt in enumerate(prompts()):
        unpruned = hf_inputs(processor, [prompt])["input_ids"].shape[1]
        dropped = batch.visual_tokens_total[i] - kept[i] + batch.newline_tokens_total[i] - batch.newline_tokens_kept[i]
        assert batch.input_tokens[i] == unpruned - dropped
        counts = batch.token_counts(i, output_tokens=3).to_dict()
        assert counts == {
            "input_tokens": batch.input_tokens[i],
            "output_tokens": 3,
            "visual_tokens_kept": kept[i],
            "visual_tokens_total": batch.visual_tokens_total[i],
            "newline_tokens_kept": batch.newline_tokens_kept[i],
            "newline_tokens_total": batch.newline_tokens_total[i],
            "prefill_flops": batch.prefill_flops[i],
        }
        assert batch.prefill_flops[i] > 0


def planted_significance(
    layout: AnyresLayout, views: int, base_cells: list[int], mosaic_cells: list[int]
) -> torch.Tensor:
    """(views, 36) significance, zero except 1 on the given base and mosaic raster cells."""
    significance = torch.zeros(views * BASE_TOKENS)
    significance[layout.base.sources[base_cells]] = 1.0
    significance[layout.mosaic.sources[mosaic_cells]] = 1.0
    return significance.view(views, BASE_TOKENS)


def keep_image_tokens(ours, features: torch.Tensor, significance: torch.Tensor, size: torch.Tensor) -> SimpleNamespace:
    """What the driver keeps of one image (doc t/test/0, its first image): packed positions, features, counts."""
    positions, newlines = keep_image(ours.pruning, ours.family.layout(size), significance.flatten(), "t/test/0", 0)
    return SimpleNamespace(
        positions=positions,
        features=features[positions],
        visual_tokens=positions.numel() - newlines,
        newline_tokens=newlines,
    )


def test_row_keeps_whole_mosaic_rows_with_their_newlines(tiny_next: Path) -> None:
    ours = adapter(tiny_next, strategy="row", keep_ratio=0.2)  # 1 of 6 base rows, 2 of 10 mosaic rows
    size = torch.tensor([56, 64])  # 10 x 12 mosaic
    layout = ours.family.layout(size)
    # Base row 4 and mosaic rows 3 and 7 carry the significance; mosaic row 7 straddles the two crop rows' seam.
    mosaic_cells = [3 * 12 + 5, 7 * 12, 7 * 12 + 11]
    significance = planted_significance(layout, 5, [4 * 6 + 2], mosaic_cells)
    features = torch.arange(layout.num_packed_tokens, dtype=torch.float32)[:, None]
    kept = keep_image_tokens(ours, features, significance, size)
    mosaic_row = lambda row: list(range(36 + row * 13, 36 + row * 13 + 13))  # noqa: E731  12 tokens, then a newline
    assert kept.positions.tolist() == list(range(24, 30)) + mosaic_row(3) + mosaic_row(7)
    assert kept.features[:, 0].tolist() == kept.positions.tolist()
    assert (kept.visual_tokens, kept.newline_tokens) == (6 + 24, 2)


def test_rank_keeps_only_the_newlines_of_rows_it_touches(tiny_next: Path) -> None:
    ours = adapter(tiny_next, strategy="rank", keep_tokens=3)
    size = torch.tensor([40, 80])  # 6 x 12 mosaic
    layout = ours.family.layout(size)
    significance = planted_significance(layout, 3, [0, 7, 35], [2 * 12 + 1, 2 * 12 + 8, 5 * 12 + 11])
    features = torch.zeros(layout.num_packed_tokens, 1)
    kept = keep_image_tokens(ours, features, significance, size)
    newline = lambda row: 36 + row * 13 + 12  # noqa: E731
    assert kept.positions.tolist() == [0, 7, 35, 36 + 26 + 1, 36 + 26 + 8, newline(2), 36 + 65 + 11, newline(5)]
    assert (kept.visual_tokens, kept.newline_tokens) == (6, 2)


# ----- batching, positions, loglikelihood --------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["rank", "row", "random", "none"])
def test_a_batch_of_mixed_image_sizes_equals_one_by_one(tiny_next: Path, strategy: str) -> None:
    args = {"strategy": strategy} if strategy == "none" else {"strategy": strategy, "keep_ratio": 0.25}
    ours = adapter(tiny_next, **args)
    batch = [*prompts(), two_image_prompt()]
    gen = {"max_new_tokens": 6, "temperature": 0}
    one_by_one = [ours._generate([p], gen)[0] for p in batch]
    batched = ours._generate(batch, gen)
    assert [a.text for a in batched] == [a.text for a in one_by_one]
    assert [a.token_counts.to_dict() for a in batched] == [a.token_counts.to_dict() for a in one_by_one]
    with torch.inference_mode():
        newlines = ours.prepare(batch).newline_tokens_kept
        assert newlines == [ours.prepare([p]).newline_tokens_kept[0] for p in batch]


def test_original_positions_keep_each_token_where_it_was(tiny_next: Path, eager: tuple) -> None:
    compact = adapter(tiny_next, strategy="rank", keep_ratio=0.25)
    original = adapter(tiny_next, strategy="rank", keep_ratio=0.25, positions="original")
    for prompt in [prompts()[0], two_image_prompt()]:
        with torch.inference_mode():
            original_logits = original.model(**original.prepare([prompt]).inputs).logits
            compact_logits = compact.model(**compact.prepare([prompt]).inputs).logits
        expected, _, _ = reference_logits(*eager, prompt, "rank", 0.25, original_positions=True)
        torch.testing.assert_close(original_logits, expected, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(original_logits, compact_logits, atol=1e-4)


def test_original_positions_carry_through_generation(tiny_next: Path) -> None:
    """Greedy generate() equals a step-by-step decode whose new tokens follow the last original position."""
    ours = adapter(tiny_next, strategy="row", keep_ratio=0.5, positions="original")
    prompt = prompts(1)[0]
    [answer] = ours._generate([prompt], {"max_new_tokens": 5})
    with torch.inference_mode():
        inputs = ours.prepare([prompt]).inputs
    tokens = greedy_decode_by_hand(ours, inputs, steps=5)
    assert answer.text == ours.tokenizer.decode(tokens, skip_special_tokens=True)
    # Half of the 36 base tokens, 5 of the 10 mosaic rows (60 tokens, 5 newlines) were dropped.
    assert int(inputs["position_ids"][0, -1]) == inputs["input_ids"].shape[1] - 1 + 18 + 60 + 5


def loglikelihood_requests(docs: list[dict], continuation: str) -> list[Instance]:
    return [
        Instance(
            "loglikelihood",
            (doc["q"], continuation, lambda doc: doc["images"], i, "t", "test"),
            idx=0,
            metadata={"task": "t", "doc_id": i, "repeats": 1},
        )
        for i, doc in enumerate(docs)
    ]


@pytest.mark.parametrize(
    "args", [{"strategy": "none"}, {"strategy": "row", "keep_ratio": 0.5, "positions": "original"}]
)
def test_loglikelihood_is_the_mean_token_loss_of_the_continuation(tiny_next: Path, eager: tuple, args: dict) -> None:
    ours = adapter(tiny_next, batch_size=3, **args)
    batch = [*prompts(2), two_image_prompt()]
    ours.task_dict = {"t": {"test": [{"q": p.messages[0]["content"][-1]["text"], "images": p.images} for p in batch]}}
    results = ours.loglikelihood(loglikelihood_requests(ours.task_dict["t"]["test"], " red"))
    target = ours.tokenizer.encode(" red", add_special_tokens=False)
    for result, prompt in zip(results, batch, strict=True):
        ratio = args.get("keep_ratio")
        reference = llava_hf_simple_prompt(eager[1], prompt)
        logits, _, _ = reference_logits(
            *eager, reference, args["strategy"], ratio, original_positions="positions" in args, continuation=target
        )
        predicted = logits[0, -len(target) - 1 : -1]
        loss = torch.nn.functional.cross_entropy(predicted, torch.tensor(target)).item()
        assert result.text[0] == pytest.approx(loss, rel=1e-4)
        assert result.text[1] == bool((predicted.argmax(-1) == torch.tensor(target)).all())


# ----- errors ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"strategy": "rank", "keep_ratio": 0}, "0 < keep_ratio <= 1"),
        ({"strategy": "rank", "keep_ratio": 0.5, "keep_tokens": 3}, "exclusive"),
        ({"strategy": "prune", "keep_ratio": 0.5}, "accepted values: rank, row, random, none"),
        ({"strategy": "row"}, "needs a budget"),
        ({"strategy": "rank", "keep_ratio": 0.5, "positions": "grid"}, "accepted values: compact, original"),
        ({"strategy": "rank", "keep_ratio": 0.5, "batch_size": "auto"}, "batch_size='auto'"),
        ({"strategy": "rank", "keep_ratio": 0.5, "dtype": "float8"}, "accepted values: auto, float32, float16"),
        ({"strategy": "rank", "keep_ratio": 0.5, "max_crops": 2}, r"unknown model args \['max_crops'\]"),
    ],
)
def test_bad_model_args_fail_before_weights_load(tiny_next: Path, args: dict, message: str) -> None:
    with mock.patch.object(LlavaNextForConditionalGeneration, "from_pretrained", side_effect=AssertionError("loaded")):
        with pytest.raises((PruningConfigError, ValueError), match=message):
            adapter(tiny_next, **args)


def save_config(path: Path, config) -> Path:
    config.save_pretrained(path)
    return path


@pytest.mark.parametrize(
    ("checkpoint", "message"),
    [
        ("llava", "'llava' checkpoint; llava_next_fopru wraps LlavaNextForConditionalGeneration"),
        ("llama", "'llama' checkpoint; llava_next_fopru wraps LlavaNextForConditionalGeneration"),
        ("siglip", "'siglip_vision_model' vision tower; llava_next_fopru supports CLIP vision towers"),
        ("full", "vision_feature_select_strategy='full' is not supported; accepted values: default"),
    ],
)
def test_a_checkpoint_that_is_not_a_clip_llava_next_is_refused_before_weights_load(
    tiny_llava: Path, tmp_path: Path, checkpoint: str, message: str
) -> None:
    path = {
        "llava": lambda: tiny_llava,
        "llama": lambda: save_config(tmp_path, LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2)),
        "siglip": lambda: save_config(tmp_path, LlavaNextConfig(vision_config={"model_type": "siglip_vision_model"})),
        "full": lambda: save_config(tmp_path, LlavaNextConfig(vision_feature_select_strategy="full")),
    }[checkpoint]()
    with mock.patch.object(LlavaNextForConditionalGeneration, "from_pretrained", side_effect=AssertionError("loaded")):
        with pytest.raises(ValueError, match=message):
            adapter(path, strategy="rank", keep_ratio=0.5)


def test_a_generation_error_fails_loudly_naming_the_docs(tiny_next: Path) -> None:
    ours = adapter(tiny_next, strategy="row", keep_ratio=0.5)
    with mock.patch.object(ours.model, "generate", side_effect=RuntimeError("out of memory")):
        with pytest.raises(RuntimeError, match="llava_next_fopru: generation failed for t/test/0, t/test/1"):
            ours._generate(prompts(2), {"max_new_tokens": 2})


# ----- the lmms-eval CLI -------------------------------------------------------------------------------------------


def test_pruned_cli_run_reports_results_and_token_counts(tiny_next: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    model_args = f"pretrained={tiny_next},strategy=row,keep_ratio=0.5"
    run = lmms_eval(["--model", "llava_next_fopru", "--model_args", model_args, "--tasks", "fopru_shapes_gen",
                     "--batch_size", "4", "--limit", "8", "--device", "cpu"], output)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results, samples = results_of(output)
    assert "exact_match,none" in results["results"]["fopru_shapes_gen"]
    # The task's 336 x 336 images get 2 x 2 crops: a 6 x 6 base view and a square 12 x 12 mosaic (nothing to unpad).
    # row at 0.5 keeps 3 base rows (18 tokens) and 6 mosaic rows (72 tokens, and their 6 newlines).
    assert results["throughput"]["avg_visual_tokens_kept"] == 90
    assert results["throughput"]["avg_visual_tokens_total"] == 180
    processor = AutoProcessor.from_pretrained(tiny_next)
    image = draw_image("red", (0, 0, 8, 8), size=(336, 336))
    assert [s["doc_id"] for s in samples["fopru_shapes_gen"]] == list(range(8))
    for sample in samples["fopru_shapes_gen"]:
        [counts] = sample["token_counts"]
        assert counts["visual_tokens_kept"] == 90 and counts["visual_tokens_total"] == 180
        assert counts["newline_tokens_kept"] == 6 and counts["newline_tokens_total"] == 12
        prompt = processor.apply_chat_template(
            user_turn(sample["input"], [image]), add_generation_prompt=True, tokenize=False
        )
        unpruned = processor(images=[image], text=prompt)["input_ids"][0]
        assert counts["input_tokens"] == len(unpruned) - 90 - 6
        assert counts["output_tokens"] >= 1

"""qwen2_vl_fopru and qwen2_5_vl_fopru against independent references: the unpruned HF model, a hand-built forward
over only the kept tokens at their original 3-D positions, a hand-run greedy decode, and lmms-eval's own adapters."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from lmms_eval.api.instance import Instance
from transformers import AutoModelForImageTextToText, AutoProcessor, LlamaConfig, Qwen2_5_VLConfig
from transformers.models.qwen2_vl import modeling_qwen2_vl
from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

from conftest import TASKS_DIR, draw_image, lmms_eval, mixed_prompts, numpy_selection, results_of, user_turn
from fopru_eval.core.attention import fopru_significance
from fopru_eval.core.config import PruningConfigError
from fopru_eval.families.qwen_vl import qwen_vl_utils_smart_resize
from fopru_eval.tools.checkpoints.qwen_vl import save_random_qwen_vl
from fopru_model_adapters.base import Prompt
from fopru_model_adapters.qwen_vl import (
    Qwen2_5_VLFoPru,
    Qwen2_5_VLFoPruChat,
    Qwen2VLFoPru,
    QwenVLFoPru,
    jpeg_round_trip,
)

FAMILIES = {"qwen2_vl": Qwen2VLFoPru, "qwen2_5_vl": Qwen2_5_VLFoPru}
# Explicit limits for every test (Qwen2.5-VL's default min_pixels would upscale these small images).
PIXELS = {"min_pixels": 3136, "max_pixels": 200704}
# Sides are multiples of 28, so the qwen-vl-utils resize keeps them and the plain HF processor sees the same pixels.
# Qwen2.5-VL's tiny tower attends within windows of 2 x 2 merged tokens, so each image spans several windows.
WIDE = draw_image("red", (10, 10, 60, 50), size=(168, 112))  # 8 x 12 patches: a 4 x 6 grid of LLM tokens
TALL = draw_image("blue", (20, 30, 90, 150), size=(112, 196))  # 14 x 8 patches: 7 x 4
SMALL = draw_image("green", (10, 20, 60, 70), size=(84, 84))  # 6 x 6 patches: 3 x 3


def prompts() -> list[Prompt]:
    return mixed_prompts(WIDE, TALL, SMALL)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_qwen_vl")
    return {family: save_random_qwen_vl(root / family, family) for family in FAMILIES}


def adapter(checkpoints: dict[str, Path], family: str, **args) -> QwenVLFoPru:
    # float32, as the Hugging Face references here load (Qwen2.5-VL's adapter defaults to lmms-eval's bfloat16).
    return FAMILIES[family](pretrained=str(checkpoints[family]), device="cpu", **{**PIXELS, "dtype": "float32", **args})


def hf_model_and_processor(path: Path, **load_args) -> tuple:
    model = AutoModelForImageTextToText.from_pretrained(path, **load_args).eval()
    size = {"shortest_edge": PIXELS["min_pixels"], "longest_edge": PIXELS["max_pixels"]}
    return model, AutoProcessor.from_pretrained(path, size=size)


def hf_inputs(processor, batch: list[Prompt]) -> dict:
    texts = [processor.apply_chat_template(p.messages, add_generation_prompt=True, tokenize=False) for p in batch]
    images = [image for p in batch for image in p.images]
    return processor(images=images or None, text=texts, padding=True, return_tensors="pt")


# ----- strategy=none is the unpruned model -----------------------------------------------------------------------


# ----- a pruned run is the model over only the kept tokens, at their own positions -----------------------------


def positions_by_hand(ids: list[int], grids: list[list[int]], image_token_id: int) -> torch.Tensor:
    """Qwen-VL's M-RoPE rule written out: text counts up on all three axes; an image's token (r, c) on its merged
    grid sits at (start, start + r, start + c); text after an image resumes at start + max(rows, cols)."""
    positions, current, i, image = [], 0, 0, 0
    while i < len(ids):
        if ids[i] == image_token_id:
            rows, cols = grids[image][1] // 2, grids[image][2] // 2
            positions += [(current, current + r, current + c) for r in range(rows) for c in range(cols)]
            current, i, image = current + max(rows, cols), i + rows * cols, image + 1
        else:
            positions.append((current, current, current))
            current, i = current + 1, i + 1
    return torch.tensor(positions).T


def reference_significance(model, family: str, pixel_values: torch.Tensor, grids: torch.Tensor) -> list[np.ndarray]:
    """Per image, a (rows, cols) significance on the merged grid, independent of the adapter: the chosen block's
    attention recomputed from that block's own inputs with the modeling file's rotary and eager attention, FoPru's
    formulas in float64, each patch put at its (h, w) as the block sees it, then the mean of each 2 x 2 group."""
    vision = model.config.vision_config
    tower = model.model.visual
    block = tower.blocks[max(vision.fullatt_block_indexes) if family == "qwen2_5_vl" else vision.depth - 1].attn
    seen = {}
    hook = block.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(hidden=args[0], **kwargs), with_kwargs=True
    )
    model.model.get_image_features(pixel_values, grids)
    hook.remove()
    # (h, w) of every patch in the order the blocks see them: window order in Qwen2.5-VL. Checked against the
    # rotary embedding the block actually received.
    coords = get_vision_position_ids(grids, 2)
    if family == "qwen2_5_vl":
        window_index, _ = get_vision_window_index(grids, 2, vision.window_size, vision.patch_size)
        coords = coords.reshape(-1, 4, 2)[window_index].reshape(-1, 2)
    torch.testing.assert_close(tower.rotary_pos_emb(seen["hidden"], coords)[0], seen["position_embeddings"][0])

    tokens = seen["hidden"].shape[0]
    q, k, v = block.qkv(seen["hidden"]).reshape(tokens, 3, block.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    q, k = modeling_qwen2_vl.apply_rotary_pos_emb_vision(q, k, *seen["position_embeddings"])
    bounds = seen["cu_seqlens"].tolist()
    maps = []
    for a, b, (_, h, w) in zip(bounds[:-1], bounds[1:], grids.tolist(), strict=True):
        heads_first = [x[a:b].transpose(0, 1)[None] for x in (q, k, v)]
        _, weights = modeling_qwen2_vl.eager_attention_forward(block, *heads_first, None, scaling=block.scaling)
        attention = weights[0].double().mean(0).numpy()
        column, row = attention.mean(axis=0), attention.mean(axis=1)
        scores = np.zeros((h, w))
        scores[coords[a:b, 0].numpy(), coords[a:b, 1].numpy()] = column if column.var() > row.var() else row
        maps.append(scores.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)))
    return maps


def reference_inputs(model, processor, family: str, prompt: Prompt, strategy: str, ratio: float) -> tuple:
    """Embeddings and (3, tokens) positions of the sequence the LLM should see: the unpruned sequence less the pruned
    visual tokens, every kept token at its own unpruned position. Also the kept count per image."""
    inputs = hf_inputs(processor, [prompt])
    ids, grids = inputs["input_ids"][0], inputs["image_grid_thw"]
    features = model.model.get_image_features(inputs["pixel_values"], grids).pooler_output
    maps = reference_significance(model, family, inputs["pixel_values"], grids)
    kept = [numpy_selection(scores, strategy, ratio, None) for scores in maps]

    image_token_id = model.config.image_token_id
    embeds = model.get_input_embeddings()(ids)
    keep = ids != image_token_id
    placeholders = (ids == image_token_id).nonzero().flatten()
    offset = 0
    for image_features, image_kept in zip(features, kept, strict=True):
        span = placeholders[offset : offset + len(image_features)]
        embeds[span] = image_features
        keep[span[torch.from_numpy(image_kept)]] = True
        offset += len(image_features)
    positions = positions_by_hand(ids.tolist(), grids.tolist(), image_token_id)
    return embeds[keep], positions[:, keep], [len(k) for k in kept]


def reference_logits(model, embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    hidden = model.model.language_model(inputs_embeds=embeds[None], position_ids=positions[:, None]).last_hidden_state
    return model.lm_head(hidden)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("strategy", "ratio"), [("rank", 0.25), ("rank", 0.5), ("row", 0.5)])
def test_pruned_run_equals_a_reference_over_only_the_kept_tokens(
    checkpoints: dict[str, Path], family: str, strategy: str, ratio: float
) -> None:
    # Two images of different sizes in one doc, both spanning several of Qwen2.5-VL's attention windows.
    prompt = Prompt(user_turn("Compare the two shapes.", [TALL, WIDE]), [TALL, WIDE], "t/test/0")
    ours = adapter(checkpoints, family, strategy=strategy, keep_ratio=ratio)
    model, processor = hf_model_and_processor(checkpoints[family], attn_implementation="eager")
    with torch.inference_mode():
        batch = ours.prepare([prompt])
        logits = ours.model(**batch.inputs).logits
        embeds, positions, kept = reference_inputs(model, processor, family, prompt, strategy, ratio)
        expected = reference_logits(model, embeds, positions)
    assert batch.visual_tokens_kept == [sum(kept)] and batch.visual_tokens_total == [28 + 24]
    assert torch.equal(batch.inputs["position_ids"][1:, 0], positions)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_after_a_pruned_prefill_continues_from_the_unpruned_positions(
    checkpoints: dict[str, Path], family: str
) -> None:
    """generate on a left-padded pruned batch equals a greedy decode by hand, without cache, in which each new token
    takes the next position of the unpruned sequence (its largest position + 1) on all three axes."""
    batch_prompts = prompts()[:2]
    ours = adapter(checkpoints, family, strategy="rank", keep_ratio=0.5, batch_size=2)
    model, processor = hf_model_and_processor(checkpoints[family], attn_implementation="eager")
    eos, steps = processor.tokenizer.eos_token_id, 6
    with torch.inference_mode():
        batch = ours.prepare(batch_prompts)
        generated = ours.model.generate(**batch.inputs, max_new_tokens=steps, do_sample=False, eos_token_id=eos)
        generated = generated[:, batch.inputs["input_ids"].shape[1] :].tolist()
        for prompt, tokens in zip(batch_prompts, generated, strict=True):
            embeds, positions, _ = reference_inputs(model, processor, family, prompt, "rank", 0.5)
            by_hand = []
            for _ in range(steps):
                token = reference_logits(model, embeds, positions)[0, -1].argmax()
                by_hand.append(int(token))
                embeds = torch.cat([embeds, model.get_input_embeddings()(token)[None]])
                positions = torch.cat([positions, (positions.max() + 1).repeat(3, 1)], dim=1)
            length = by_hand.index(eos) + 1 if eos in by_hand else steps
            assert tokens[:length] == by_hand[:length]


# ----- selection on rectangular merged grids, batching, several images -----------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    ("budget", "expected"),
    [
        ({"strategy": "rank", "keep_ratio": 0.25}, [6, 7]),  # floor(24 / 4), floor(28 / 4)
        ({"strategy": "rank", "keep_tokens": 7}, [7, 7]),
        ({"strategy": "row", "keep_ratio": 0.5}, [2 * 6, 3 * 4]),  # floor(4 / 2) rows of 6, floor(7 / 2) rows of 4
        ({"strategy": "row", "keep_tokens": 13}, [2 * 6, 3 * 4]),  # as many whole rows as fit in 13
    ],
)
def test_rank_and_row_keep_counts_on_rectangular_grids(
    checkpoints: dict[str, Path], family: str, budget: dict, expected: list[int]
) -> None:
    ours = adapter(checkpoints, family, **budget)
    with torch.inference_mode():
        batch = ours.prepare(prompts()[:2])
    assert batch.visual_tokens_kept == expected and batch.visual_tokens_total == [24, 28]
    if budget["strategy"] == "row":
        for row, cols in zip(range(2), (6, 4), strict=True):
            # Kept visual tokens form whole rows of the merged grid: each kept height has every width.
            image = batch.inputs["input_ids"][row] == ours.model.config.image_token_id
            heights, widths = batch.inputs["position_ids"][2:, row][:, image]
            for height in heights.unique():
                assert len(widths[heights == height].unique()) == cols


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("strategy", ["rank", "row", "random"])
def test_batching_does_not_change_answers(checkpoints: dict[str, Path], family: str, strategy: str) -> None:
    ours = adapter(checkpoints, family, strategy=strategy, keep_ratio=0.5)
    gen = {"max_new_tokens": 6, "temperature": 0}
    one_by_one = [ours._generate([p], gen)[0] for p in prompts()]
    batched = ours._generate(prompts(), gen)
    assert [a.text for a in batched] == [a.text for a in one_by_one]
    assert [a.token_counts.to_dict() for a in batched] == [a.token_counts.to_dict() for a in one_by_one]
    assert [a.token_counts.visual_tokens_total for a in batched] == [24, 28, 33, 0]


# ----- significance without a CLS token ---------------------------------------------------------------------------


def test_column_significance_in_chunks_equals_the_whole_map() -> None:
    generator = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 37, 3, 4, generator=generator, dtype=torch.float64)
    scores = np.einsum("ihd,jhd->hij", q.numpy(), k.numpy()) * 0.5
    attention = np.exp(scores - scores.max(axis=-1, keepdims=True))
    attention /= attention.sum(axis=-1, keepdims=True)
    expected = attention.mean(axis=0).mean(axis=0)
    # The packed towers' scoring: one image, (1, heads, tokens, head_dim), no prefix token.
    column = fopru_significance(q.transpose(0, 1)[None], k.transpose(0, 1)[None], 0.5, 0, "column", 100)[0]
    np.testing.assert_allclose(column.numpy(), expected, rtol=1e-6)


def test_row_significance_is_uniform_so_auto_picks_column() -> None:
    q, k = torch.randn(2, 1, 3, 4, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    column = fopru_significance(q, k, 0.5, 0, "column")
    assert torch.equal(fopru_significance(q, k, 0.5, 0, "auto"), column)
    assert torch.equal(fopru_significance(q, k, 0.5, 0, "row"), torch.full((1, 4), 0.25, dtype=torch.float64))
    flat = torch.zeros_like(q)  # every score equal: column and row are both uniform, and auto takes row
    assert torch.equal(fopru_significance(flat, k, 0.5, 0, "auto"), torch.full((1, 4), 0.25, dtype=torch.float64))


@pytest.mark.parametrize("family", FAMILIES)
def test_row_significance_keeps_the_first_tokens_in_raster_order(checkpoints: dict[str, Path], family: str) -> None:
    ours = adapter(checkpoints, family, strategy="rank", keep_ratio=0.25, significance="row")
    with torch.inference_mode():
        batch = ours.prepare(prompts()[:1])
    image = batch.inputs["input_ids"][0] == ours.model.config.image_token_id
    t, h, w = batch.inputs["position_ids"][1:, 0][:, image]
    assert torch.equal(h - t, torch.zeros(6, dtype=h.dtype)) and torch.equal(w - t, torch.arange(6))


# ----- matching lmms-eval's Qwen adapters -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(336, 336), (100, 60), (20, 700), (1000, 900), (30, 31)])
def test_images_are_resized_exactly_as_qwen_vl_utils_resizes_them(
    checkpoints: dict[str, Path], size: tuple[int, int]
) -> None:
    import qwen_vl_utils

    image = draw_image("red", (5, 5, 15, 15), size=size)
    for limits in [(3136, 200704), (200704, 1605632)]:
        expected = qwen_vl_utils.smart_resize(size[1], size[0], 28, *limits)
        assert qwen_vl_utils_smart_resize(size[1], size[0], 28, *limits) == expected
    ours = adapter(checkpoints, "qwen2_vl", strategy="none")
    reference = qwen_vl_utils.fetch_image({"image": image, **PIXELS})
    assert np.array_equal(np.asarray(ours.family.prepare_image(image)), np.asarray(reference))


def test_answers_are_finished_as_lmms_eval_finishes_them() -> None:
    text, gen = " A cat.\n\nIt sits. STOP more ", {"until": ["\n\n", "STOP"]}
    # qwen2_vl: cut at every until string, then strip; qwen2_5_vl: cut at all but "\n\n"; its chat class: neither.
    assert Qwen2VLFoPru._finish_answer(Qwen2VLFoPru.__new__(Qwen2VLFoPru), text, gen) == "A cat."
    assert Qwen2_5_VLFoPru._finish_answer(Qwen2_5_VLFoPru.__new__(Qwen2_5_VLFoPru), text, gen) == " A cat.\n\nIt sits. "
    chat = Qwen2_5_VLFoPruChat.__new__(Qwen2_5_VLFoPruChat)
    assert Qwen2_5_VLFoPruChat._finish_answer(chat, text, gen) == text


@pytest.mark.parametrize("family", FAMILIES)
def test_loglikelihood_is_the_mean_token_loss_of_the_continuation(checkpoints: dict[str, Path], family: str) -> None:
    ours = adapter(checkpoints, family, strategy="none", batch_size=2)
    docs = [{"q": p.messages[0]["content"][-1]["text"], "images": p.images} for p in prompts()]
    ours.task_dict = {"t": {"test": docs}}
    requests = [
        Instance(
            "loglikelihood",
            (doc["q"], " red", lambda doc: doc["images"], i, "t", "test"),
            idx=0,
            metadata={"task": "t", "doc_id": i, "repeats": 1},
        )
        for i, doc in enumerate(docs)
    ]
    results = ours.loglikelihood(requests)
    model, processor = hf_model_and_processor(checkpoints[family])
    target = processor.tokenizer.encode(" red", add_special_tokens=False)
    for result, prompt in zip(results, prompts(), strict=True):
        # The simple class sees each image through lmms-eval's JPEG round trip, in loglikelihood as in generation.
        prompt.images[:] = [jpeg_round_trip(image) for image in prompt.images]
        inputs = hf_inputs(processor, [prompt])
        ids = torch.cat([inputs["input_ids"], torch.tensor([target])], dim=1)
        labels = torch.full_like(ids, -100)
        labels[0, -len(target) :] = torch.tensor(target)
        token_types = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(ids[:, -len(target) :])], dim=1)
        images = {key: inputs[key] for key in ("pixel_values", "image_grid_thw") if key in inputs}
        with torch.no_grad():
            output = model(input_ids=ids, labels=labels, mm_token_type_ids=token_types, **images)
        loss, is_greedy = result.text
        assert loss == pytest.approx(output.loss.item(), rel=1e-5)
        assert is_greedy == bool((output.logits[0, -len(target) - 1 : -1].argmax(-1) == torch.tensor(target)).all())


# ----- errors before weights load ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"strategy": "rank", "keep_ratio": 2}, "0 < keep_ratio <= 1"),
        ({"strategy": "prune", "keep_ratio": 0.5}, "accepted values: rank, row, random, none"),
        ({"strategy": "rank", "keep_ratio": 0.5, "significance": "max"}, "accepted values: auto, column, row"),
        ({"strategy": "none", "min_pixels": 0}, "min_pixels=0 is not supported; accepted values: integers >= 1"),
        ({"strategy": "none", "max_pixels": "many"}, "max_pixels='many' is not supported"),
        ({"strategy": "none", "min_pixels": 5000, "max_pixels": 4000}, "min_pixels=5000 is above max_pixels=4000"),
        (
            {"strategy": "none", "max_pixel": 4000},
            r"unknown model args \['max_pixel'\]; accepted: pretrained, min_pixels, max_pixels, lossless_images, "
            r"revision",
        ),
    ],
)
def test_bad_model_args_fail_before_weights_load(
    checkpoints: dict[str, Path], family: str, args: dict, message: str
) -> None:
    cls = FAMILIES[family]
    with mock.patch.object(cls.family_class.model_class, "from_pretrained", side_effect=AssertionError("loaded")):
        with pytest.raises((PruningConfigError, ValueError), match=message):
            cls(pretrained=str(checkpoints[family]), device="cpu", **args)


def test_checkpoints_of_another_family_are_refused_before_weights_load(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(
        tmp_path / "llama"
    )
    config = Qwen2_5_VLConfig.from_pretrained(checkpoints["qwen2_5_vl"])
    config.vision_config.fullatt_block_indexes = []
    config.save_pretrained(tmp_path / "windowed_only")
    cases = [
        (Qwen2VLFoPru, tmp_path / "llama", "'llama' checkpoint; qwen2_vl_fopru wraps Qwen2VLForConditionalGeneration"),
        (Qwen2_5_VLFoPru, checkpoints["qwen2_vl"], "'qwen2_vl' checkpoint; qwen2_5_vl_fopru wraps Qwen2_5_VLFor"),
        (Qwen2VLFoPru, checkpoints["qwen2_5_vl"], r"model_type 'qwen2_vl', e.g. Qwen/Qwen2-VL-7B-Instruct\)"),
        (Qwen2_5_VLFoPru, tmp_path / "windowed_only", "no full-attention vision block"),
    ]
    for cls, path, message in cases:
        with mock.patch.object(cls.family_class.model_class, "from_pretrained", side_effect=AssertionError("loaded")):
            with pytest.raises(ValueError, match=message):
                cls(pretrained=str(path), device="cpu", strategy="rank", keep_ratio=0.5)


# ----- lmms-eval end to end --------------------------------------------------------------------------------------

# 336 x 336 task images become 112 x 112 under these limits: 8 x 8 patches, 16 LLM tokens.
TASK_PIXELS = "min_pixels=3136,max_pixels=12544"


@pytest.fixture(scope="module")
def task_manager():
    from lmms_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR))  # reads every built-in task's YAML: seconds, so only once


def lmms_eval_in_process(
    task_manager, model: str, model_args: str, task: str = "fopru_shapes_gen", limit: int | None = 4
) -> dict:
    """lmms-eval's own evaluation of ``task``, as its CLI runs it (model resolved by name), in this process."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.utils import get_datetime_str

    return simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=[task],
        task_manager=task_manager,
        batch_size=1,
        device="cpu",
        limit=limit,
        log_samples=True,
        datetime_str=get_datetime_str(),
    )


def lossless(self, image) -> str:
    from lmms_eval.models.model_utils.media_encoder import encode_image_to_data_url

    return encode_image_to_data_url(image, image_format="PNG", convert_rgb=True)


@pytest.mark.parametrize(
    ("family", "ours_extra", "theirs_extra"),
    [
        # lmms-eval's qwen2_vl has a simple class only, and so has ours.
        ("qwen2_vl", ",lossless_images=true", "device_map=cpu"),
        # lmms-eval's chat qwen2_5_vl (the default) hands images over losslessly and loads bfloat16.
        ("qwen2_5_vl", ",lossless_images=true", "device_map=cpu"),
    ],
)
def test_lossless_images_answer_as_lmms_eval_qwen_adapters_with_a_lossless_encoder(
    checkpoints: dict[str, Path], task_manager, family: str, ours_extra: str, theirs_extra: str
) -> None:
    from lmms_eval.models.simple.qwen2_vl import Qwen2_VL

    path = checkpoints[family]
    ours_args = f"pretrained={path},strategy=none,{TASK_PIXELS}{ours_extra}"
    ours = lmms_eval_in_process(task_manager, f"{family}_fopru", ours_args)
    # lossless_images=true skips the JPEG round trip lmms-eval's simple qwen2_vl puts every image through; with its
    # encoder made lossless too, everything else left as it is, the answers agree.
    with mock.patch.object(Qwen2_VL, "_encode_image_data_url", lossless):
        theirs = lmms_eval_in_process(task_manager, family, f"pretrained={path},{theirs_extra},{TASK_PIXELS}")
    answers = [s["filtered_resps"] for s in ours["samples"]["fopru_shapes_gen"]]
    assert len(answers) == 4 and len(set(map(str, answers))) > 1  # the random model's answers depend on the image
    assert answers == [s["filtered_resps"] for s in theirs["samples"]["fopru_shapes_gen"]]
    assert ours["results"]["fopru_shapes_gen"] == theirs["results"]["fopru_shapes_gen"]
    assert all(s["token_counts"][0]["visual_tokens_kept"] == 16 for s in ours["samples"]["fopru_shapes_gen"])


def unpruned_prompt_length(processor, sample: dict) -> int:
    image = draw_image("red", (0, 0, 8, 8), size=(336, 336))  # any 336 x 336 image: only the token count matters
    prompt = user_turn(sample["input"], [image])
    text = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return len(processor(images=[image], text=text)["input_ids"][0])


@pytest.mark.parametrize(
    ("family", "extra_args", "tasks"),
    [
        ("qwen2_vl", [], "fopru_shapes_gen"),
        # The simple class also scores multiple choice (loglikelihood).
        ("qwen2_5_vl", ["--force_simple"], "fopru_shapes_gen,fopru_shapes_mc"),
    ],
)
def test_pruned_runs_through_the_cli_report_results_and_token_counts(
    checkpoints: dict[str, Path], tmp_path: Path, family: str, extra_args: list[str], tasks: str
) -> None:
    model_args = f"pretrained={checkpoints[family]},strategy=rank,keep_ratio=0.25,{TASK_PIXELS}"
    args = ["--model", f"{family}_fopru", *extra_args, "--model_args", model_args, "--tasks", tasks,
            "--batch_size", "4", "--limit", "4", "--device", "cpu"]  # fmt: skip
    run = lmms_eval(args, tmp_path / "out")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results, samples = results_of(tmp_path / "out")
    assert "strategy=rank,keep_ratio=0.25" in results["config"]["model_args"]
    assert results["throughput"]["avg_visual_tokens_kept"] == 4
    assert results["throughput"]["avg_visual_tokens_total"] == 16
    size = {"shortest_edge": 3136, "longest_edge": 12544}
    processor = AutoProcessor.from_pretrained(checkpoints[family], size=size)
    assert [s["doc_id"] for s in samples["fopru_shapes_gen"]] == list(range(4))
    for sample in samples["fopru_shapes_gen"]:
        [counts] = sample["token_counts"]
        assert counts["visual_tokens_kept"] == 4 and counts["visual_tokens_total"] == 16
        # The LLM saw the unpruned prompt less the 12 placeholders of pruned tokens.
        assert counts["input_tokens"] == unpruned_prompt_length(processor, sample) - 12
        assert counts["output_tokens"] >= 1
    for sample in samples.get("fopru_shapes_mc", []):
        losses = [float(loss) for loss, _ in sample["filtered_resps"]]
        assert len(losses) == len(sample["token_counts"]) in (3, 4)
        assert sample["acc"] == float(losses.index(min(losses)) == int(sample["target"]))
        assert all(c["visual_tokens_kept"] == 4 for c in sample["token_counts"])

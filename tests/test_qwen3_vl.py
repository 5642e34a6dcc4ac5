"""qwen3_vl_fopru against independent references: the unpruned HF model, a hand-built forward over only the kept
tokens at their original 3-D positions with the DeepStack features added by hand at the kept tokens, a hand-run greedy
decode, and lmms-eval's own qwen3_vl adapter."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from lmms_eval.api.instance import Instance
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers.models.qwen3_vl import modeling_qwen3_vl
from transformers.vision_utils import get_vision_position_ids

from conftest import draw_image, mixed_prompts, numpy_selection, user_turn
from fopru_eval.core.config import PruningConfigError
from fopru_eval.families.qwen3_vl import QWEN3_VL_UTILS_PIXEL_LIMITS, Qwen3VL
from fopru_eval.tools.checkpoints.qwen3_vl import save_random_qwen3_vl
from fopru_eval.tools.checkpoints.qwen_vl import save_random_qwen_vl
from fopru_model_adapters.base import Prompt
from fopru_model_adapters.qwen3_vl import Qwen3VLFoPru, Qwen3VLFoPruChat

# Explicit limits for every test (the adapter's default min_pixels would upscale these small images).
PIXELS = {"min_pixels": 4096, "max_pixels": 262144}
# Sides are multiples of 32, so the qwen-vl-utils resize keeps them and the plain HF processor sees the same pixels.
WIDE = draw_image("red", (10, 10, 60, 50), size=(192, 128))  # 8 x 12 patches of 16: a 4 x 6 grid of LLM tokens
TALL = draw_image("blue", (20, 30, 90, 150), size=(128, 224))  # 14 x 8 patches: 7 x 4 (odd rows)
SMALL = draw_image("green", (10, 20, 60, 70), size=(96, 96))  # 6 x 6 patches: 3 x 3 (odd both ways)


def prompts() -> list[Prompt]:
    return mixed_prompts(WIDE, TALL, SMALL)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_qwen3_vl(tmp_path_factory.mktemp("tiny_qwen3_vl") / "checkpoint")


def adapter(checkpoint: Path, cls: type = Qwen3VLFoPru, **args) -> Qwen3VLFoPru:
    # float32, as the Hugging Face references here load (the adapter defaults to lmms-eval's bfloat16).
    return cls(pretrained=str(checkpoint), device="cpu", **{**PIXELS, "dtype": "float32", **args})


def hf_model_and_processor(path: Path, **load_args) -> tuple:
    model = AutoModelForImageTextToText.from_pretrained(path, **load_args).eval()
    size = {"shortest_edge": PIXELS["min_pixels"], "longest_edge": PIXELS["max_pixels"]}
    return model, AutoProcessor.from_pretrained(path, size=size)


def hf_inputs(processor, batch: list[Prompt]) -> dict:
    texts = [processor.apply_chat_template(p.messages, add_generation_prompt=True, tokenize=False) for p in batch]
    images = [image for p in batch for image in p.images]
    return processor(images=images or None, text=texts, padding=True, return_tensors="pt")


def test_the_tiny_checkpoint_has_deepstack_and_whole_image_attention(checkpoint: Path) -> None:
    model, processor = hf_model_and_processor(checkpoint)
    vision = model.config.vision_config
    assert model.config.model_type == "qwen3_vl" and vision.patch_size == processor.image_processor.patch_size == 16
    assert list(vision.deepstack_visual_indexes) == [1, 2] and model.config.text_config.num_hidden_layers >= 2
    assert Qwen3VL.significance_block(vision) == vision.depth - 1


# ----- strategy=none is the unpruned model -----------------------------------------------------------------------


# ----- a pruned run is the model over only the kept tokens, at their own positions, DeepStack included -----------


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


def reference_significance(model, pixel_values: torch.Tensor, grids: torch.Tensor) -> list[np.ndarray]:
    """Per image, a (rows, cols) significance on the merged grid, independent of the adapter: the last block's
    attention recomputed from that block's own inputs with the modeling file's rotary and eager attention, FoPru's
    formulas in float64, each patch put at its (h, w), then the mean of each 2 x 2 group."""
    tower = model.model.visual
    block = tower.blocks[-1].attn
    seen = {}
    hook = block.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(hidden=args[0], **kwargs), with_kwargs=True
    )
    model.model.get_image_features(pixel_values, grids)
    hook.remove()
    # (h, w) of every patch in the order the blocks see them, checked against the rotary embedding the block received.
    coords = get_vision_position_ids(grids, 2)
    torch.testing.assert_close(tower.rotary_pos_emb(seen["hidden"], coords)[0], seen["position_embeddings"][0])

    tokens = seen["hidden"].shape[0]
    q, k, v = block.qkv(seen["hidden"]).reshape(tokens, 3, block.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    q, k = modeling_qwen3_vl.apply_rotary_pos_emb_vision(q, k, *seen["position_embeddings"])
    bounds = seen["cu_seqlens"].tolist()
    maps = []
    for a, b, (_, h, w) in zip(bounds[:-1], bounds[1:], grids.tolist(), strict=True):
        heads_first = [x[a:b].transpose(0, 1)[None] for x in (q, k, v)]
        _, weights = modeling_qwen3_vl.eager_attention_forward(block, *heads_first, None, scaling=block.scaling)
        attention = weights[0].double().mean(0).numpy()
        column, row = attention.mean(axis=0), attention.mean(axis=1)
        scores = np.zeros((h, w))
        scores[coords[a:b, 0].numpy(), coords[a:b, 1].numpy()] = column if column.var() > row.var() else row
        maps.append(scores.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)))
    return maps


def reference_inputs(model, processor, prompt: Prompt, strategy: str, ratio: float) -> dict:
    """What the LLM should see: the unpruned sequence less the pruned visual tokens, every kept token at its own
    unpruned position, the main features spliced into the embeddings and each DeepStack layer's features of the same
    kept tokens, in sequence order. Also the kept count per image."""
    inputs = hf_inputs(processor, [prompt])
    ids, grids = inputs["input_ids"][0], inputs["image_grid_thw"]
    output = model.model.get_image_features(inputs["pixel_values"], grids)
    maps = reference_significance(model, inputs["pixel_values"], grids)
    kept = [numpy_selection(scores, strategy, ratio, None) for scores in maps]

    image_token_id = model.config.image_token_id
    embeds = model.get_input_embeddings()(ids)
    keep = ids != image_token_id
    placeholders = (ids == image_token_id).nonzero().flatten()
    deepstack = [[] for _ in output.deepstack_features]
    offset = 0
    for image, (features, image_kept) in enumerate(zip(output.pooler_output, kept, strict=True)):
        span = placeholders[offset : offset + len(features)]
        embeds[span] = features
        keep[span[torch.from_numpy(image_kept)]] = True
        for layer, per_image in zip(deepstack, output.deepstack_features, strict=True):
            layer.append(per_image[image][torch.from_numpy(image_kept)])
        offset += len(features)
    positions = positions_by_hand(ids.tolist(), grids.tolist(), image_token_id)
    # The model's own rule on the unpruned sequence gives the same positions.
    model_positions, _ = model.model.get_rope_index(ids[None], inputs["mm_token_type_ids"], image_grid_thw=grids)
    assert torch.equal(model_positions[:, 0], positions)
    return {
        "embeds": embeds[keep],
        "positions": positions[:, keep],
        "visual": (ids[keep] == image_token_id),
        "deepstack": [torch.cat(layer) for layer in deepstack],
        "kept": [len(k) for k in kept],
    }


def reference_logits(model, reference: dict) -> torch.Tensor:
    """The LLM run layer by layer on one sequence: causal mask, M-RoPE from the given positions, and after layer i the
    i-th DeepStack features added to the hidden states of the visual tokens."""
    language_model = model.model.language_model
    hidden = reference["embeds"][None]
    length = hidden.shape[1]
    rotary = language_model.rotary_emb(hidden, reference["positions"][:, None])
    causal = torch.full((length, length), float("-inf")).triu(1)[None, None]
    for index, layer in enumerate(language_model.layers):
        hidden = layer(hidden, attention_mask=causal, position_embeddings=rotary, position_ids=None)
        if index < len(reference["deepstack"]):
            hidden = hidden.clone()
            hidden[0, reference["visual"]] += reference["deepstack"][index]
    return model.lm_head(language_model.norm(hidden))


def pruned_and_reference_logits(checkpoint: Path, prompt: Prompt, strategy: str, ratio: float) -> tuple:
    ours = adapter(checkpoint, strategy=strategy, keep_ratio=ratio)
    model, processor = hf_model_and_processor(checkpoint, attn_implementation="eager")
    with torch.inference_mode():
        batch = ours.prepare([prompt])
        logits = ours.model(**batch.inputs).logits
        reference = reference_inputs(model, processor, prompt, strategy, ratio)
        expected = reference_logits(model, reference)
    return batch, logits, reference, expected


# Two images of different sizes in one doc, one with an odd number of rows.
TWO_IMAGES = Prompt(user_turn("Compare the two shapes.", [TALL, WIDE]), [TALL, WIDE], "t/test/0")


@pytest.mark.parametrize(("strategy", "ratio"), [("rank", 0.25), ("rank", 0.5), ("row", 0.3), ("row", 0.5)])
def test_pruned_run_equals_a_reference_over_only_the_kept_tokens(checkpoint: Path, strategy: str, ratio: float) -> None:
    batch, logits, reference, expected = pruned_and_reference_logits(checkpoint, TWO_IMAGES, strategy, ratio)
    assert batch.visual_tokens_kept == [sum(reference["kept"])] and batch.visual_tokens_total == [28 + 24]
    assert torch.equal(batch.inputs["position_ids"][1:, 0], reference["positions"])
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "misplace",
    [
        # Each DeepStack stream shifted by one token before pruning: every kept token gets a neighbour's copy.
        lambda streams: [[stream.roll(1, dims=0) for stream in image] for image in streams],
        # No DeepStack streams at all: the injected copies dropped.
        lambda streams: [[] for _ in streams],
    ],
    ids=["shifted", "dropped"],
)
def test_the_reference_tells_misplaced_deepstack_features_apart(checkpoint: Path, misplace) -> None:
    """The test above can fail: with the DeepStack copies pruned at the wrong tokens, or dropped, the logits leave
    the reference's tolerance."""
    extra_features = Qwen3VL.extra_features
    with mock.patch.object(Qwen3VL, "extra_features", lambda self, output: misplace(extra_features(self, output))):
        _, logits, _, expected = pruned_and_reference_logits(checkpoint, TWO_IMAGES, "rank", 0.5)
    assert not torch.allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_generation_after_a_pruned_prefill_continues_from_the_unpruned_positions(checkpoint: Path) -> None:
    """generate on a left-padded pruned batch equals a greedy decode by hand, without cache, in which each new token
    takes the next position of the unpruned sequence (its largest position + 1) on all three axes, and DeepStack
    features stay on the prompt's kept visual tokens."""
    batch_prompts = prompts()[:2]
    ours = adapter(checkpoint, strategy="rank", keep_ratio=0.5, batch_size=2)
    model, processor = hf_model_and_processor(checkpoint, attn_implementation="eager")
    eos, steps = processor.tokenizer.eos_token_id, 6
    with torch.inference_mode():
        batch = ours.prepare(batch_prompts)
        generated = ours.model.generate(**batch.inputs, max_new_tokens=steps, do_sample=False, eos_token_id=eos)
        generated = generated[:, batch.inputs["input_ids"].shape[1] :].tolist()
        for prompt, tokens in zip(batch_prompts, generated, strict=True):
            reference = reference_inputs(model, processor, prompt, "rank", 0.5)
            by_hand = []
            for _ in range(steps):
                token = reference_logits(model, reference)[0, -1].argmax()
                by_hand.append(int(token))
                reference["embeds"] = torch.cat([reference["embeds"], model.get_input_embeddings()(token)[None]])
                next_position = (reference["positions"].max() + 1).repeat(3, 1)
                reference["positions"] = torch.cat([reference["positions"], next_position], dim=1)
                reference["visual"] = torch.cat([reference["visual"], torch.tensor([False])])
            length = by_hand.index(eos) + 1 if eos in by_hand else steps
            assert tokens[:length] == by_hand[:length]


# ----- selection on rectangular and odd merged grids, batching, several images ------------------------------------


@pytest.mark.parametrize(
    ("budget", "per_image"),
    [
        # The batch's images: WIDE 4 x 6, TALL 7 x 4, SMALL 3 x 3 and WIDE again (SMALL and WIDE in one doc).
        ({"strategy": "rank", "keep_ratio": 0.25}, [6, 7, 2, 6]),  # floor(24 / 4), floor(28 / 4), floor(9 / 4)
        ({"strategy": "rank", "keep_tokens": 7}, [7, 7, 7, 7]),
        ({"strategy": "row", "keep_ratio": 0.5}, [2 * 6, 3 * 4, 1 * 3, 2 * 6]),  # floor(rows / 2) whole rows
        ({"strategy": "row", "keep_tokens": 13}, [2 * 6, 3 * 4, 3 * 3, 2 * 6]),  # as many whole rows as fit in 13
        ({"strategy": "uniform", "keep_ratio": 0.5}, [12, 14, 4, 12]),
        ({"strategy": "random", "keep_tokens": 5}, [5, 5, 5, 5]),
    ],
)
def test_keep_counts_on_rectangular_and_odd_grids(checkpoint: Path, budget: dict, per_image: list[int]) -> None:
    ours = adapter(checkpoint, **budget)
    with torch.inference_mode():
        batch = ours.prepare(prompts())
    per_sample = [per_image[0], per_image[1], per_image[2] + per_image[3], 0]
    assert batch.visual_tokens_kept == per_sample and batch.visual_tokens_total == [24, 28, 9 + 24, 0]
    # The LLM sees exactly the kept visual tokens, and each gets one DeepStack copy per injected layer.
    image_tokens = (batch.inputs["input_ids"] == ours.model.config.image_token_id).sum(dim=1).tolist()
    assert image_tokens == per_sample
    encoder_outputs = batch.inputs["mm_encoder_outputs"]["image"]
    assert [len(features) for features in encoder_outputs.pooler_output] == per_image
    assert len(encoder_outputs.deepstack_features) == 2
    for layer in encoder_outputs.deepstack_features:
        assert [len(features) for features in layer] == per_image
    if budget["strategy"] == "row":
        for row, cols in zip(range(2), (6, 4), strict=True):
            # Kept visual tokens form whole rows of the merged grid: each kept height has every width.
            image = batch.inputs["input_ids"][row] == ours.model.config.image_token_id
            heights, widths = batch.inputs["position_ids"][2:, row][:, image]
            for height in heights.unique():
                assert len(widths[heights == height].unique()) == cols


def eight_prompts() -> list[Prompt]:
    """Eight docs: the four above and four more (other sizes, three images in one doc), each its own doc key."""
    more = [
        ("Which is larger?", [SMALL, TALL, WIDE]),
        ("Describe it.", [draw_image("yellow", (40, 40, 120, 90), size=(160, 96))]),  # 6 x 10 patches: 3 x 5
        ("What is at the bottom?", [TALL]),
        ("Count the shapes.", [WIDE, SMALL]),
    ]
    extra = [Prompt(user_turn(q, images), images, f"t/test/{4 + i}") for i, (q, images) in enumerate(more)]
    return prompts() + extra


@pytest.mark.parametrize("strategy", ["rank", "row", "random"])
def test_batch_of_eight_answers_as_one_by_one(checkpoint: Path, strategy: str) -> None:
    ours = adapter(checkpoint, strategy=strategy, keep_ratio=0.5, batch_size=8)
    gen = {"max_new_tokens": 6, "temperature": 0}
    one_by_one = [ours._generate([p], gen)[0] for p in eight_prompts()]
    batched = ours._generate(eight_prompts(), gen)
    assert [a.text for a in batched] == [a.text for a in one_by_one]
    assert [a.token_counts.to_dict() for a in batched] == [a.token_counts.to_dict() for a in one_by_one]
    assert [a.token_counts.visual_tokens_total for a in batched] == [24, 28, 33, 0, 9 + 28 + 24, 15, 28, 33]
    assert len({a.text for a in batched}) > 1  # the random model's answers depend on the input


def test_prefill_flops_are_the_hand_count(checkpoint: Path) -> None:
    """The WIDE image: 8 x 12 = 96 patches of 16 through 4 blocks of width 32 (4 heads, plain MLP 64) attending over
    all 96 x 96 pairs, then three mergers (the main one and two DeepStack ones), each 128 -> 128 -> 64 over the 24
    groups of 2 x 2 patches."""
    ours = adapter(checkpoint, strategy="rank", keep_tokens=5)
    batch = ours.prepare(prompts()[:1])
    tower = (
        2 * 96 * (3 * 2 * 16 * 16) * 32  # patch embedding (3 channels, 2 frames, 16 x 16)
        + 4 * (2 * 96 * 32 * (4 * 32) + 2 * 2 * 96 * 96 * 32 + 2 * 2 * 96 * 32 * 64)
        + 3 * (2 * 24 * 128 * 128 + 2 * 24 * 128 * 64)
    )
    tokens = batch.input_tokens[0]
    llm = 2 * (
        2 * tokens * 64 * (64 + 2 * 32 + 64)  # q and o of 4 x 16, k and v of 2 KV heads x 16
        + 2 * 2 * (tokens * (tokens + 1) // 2) * 64
        + 3 * 2 * tokens * 64 * 192
    ) + 2 * 64 * len(ours.tokenizer)
    assert batch.prefill_flops == [tower + llm]


# ----- matching lmms-eval's qwen3_vl -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(336, 336), (100, 60), (20, 700), (1000, 900), (30, 31)])
def test_images_are_resized_exactly_as_qwen_vl_utils_resizes_them_for_qwen3(checkpoint: Path, size: tuple) -> None:
    import qwen_vl_utils

    image = draw_image("red", (5, 5, 15, 15), size=size)
    simple, chat = adapter(checkpoint, strategy="none"), adapter(checkpoint, Qwen3VLFoPruChat, strategy="none")
    # lmms-eval's simple qwen3_vl passes its pixel limits to qwen-vl-utils, its chat class none.
    for ours, limits in ((simple, PIXELS), (chat, {})):
        reference = qwen_vl_utils.fetch_image({"image": image, **limits}, image_patch_size=16)
        assert np.array_equal(np.asarray(ours.family.prepare_image(image)), np.asarray(reference))
    assert chat.family.presize_limits == QWEN3_VL_UTILS_PIXEL_LIMITS
    # The processor never resizes again (lmms-eval's qwen3_vl calls it with do_resize=False).
    assert not simple.processor.image_processor.do_resize


def test_prompts_open_with_lmms_eval_system_turn(checkpoint: Path) -> None:
    ours = adapter(checkpoint, strategy="none")
    ours.task_dict = {"t": {"test": [{"q": "x"}]}}
    prompt = ours._prompt_from_visuals("<image>What is it?", lambda doc: [WIDE], 0, "t", "test")
    text = ours.processor.apply_chat_template(prompt.messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>What is it?<|im_end|>\n<|im_start|>assistant\n"
    )
    custom = adapter(checkpoint, strategy="none", system_prompt="Be brief.")
    custom.task_dict = ours.task_dict
    prompt = custom._prompt_from_visuals("Hi", lambda doc: [], 0, "t", "test")
    assert prompt.messages[0] == {"role": "system", "content": "Be brief."}


def test_answers_are_finished_as_lmms_eval_finishes_them() -> None:
    text, gen = " A cat.\n\nIt sits. STOP more ", {"until": ["\n\n", "STOP"]}
    # The simple class cuts at every until string but "\n\n" and strips nothing; the chat class does neither.
    assert Qwen3VLFoPru._finish_answer(Qwen3VLFoPru.__new__(Qwen3VLFoPru), text, gen) == " A cat.\n\nIt sits. "
    assert Qwen3VLFoPruChat._finish_answer(Qwen3VLFoPruChat.__new__(Qwen3VLFoPruChat), text, gen) == text


def test_loglikelihood_is_the_mean_token_loss_of_the_continuation(checkpoint: Path) -> None:
    ours = adapter(checkpoint, strategy="none", batch_size=2)
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
    model, processor = hf_model_and_processor(checkpoint)
    target = processor.tokenizer.encode(" red", add_special_tokens=False)
    for result, prompt in zip(results, prompts(), strict=True):
        prompt.messages.insert(0, {"role": "system", "content": "You are a helpful assistant."})
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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"strategy": "rank", "keep_ratio": 2}, "0 < keep_ratio <= 1"),
        ({"strategy": "prune", "keep_ratio": 0.5}, "accepted values: rank, row, random, "),
        ({"strategy": "rank", "keep_ratio": 0.5, "significance": "max"}, "accepted values: auto, column, row"),
        (
            {"strategy": "rank", "keep_ratio": 0.5, "significance": "cls"},
            "significance=cls scores the CLS token's attention, and Qwen3-VL's vision tower has no CLS token",
        ),
        ({"strategy": "none", "min_pixels": 0}, "min_pixels=0 is not supported; accepted values: integers >= 1"),
        ({"strategy": "none", "max_pixels": "many"}, "max_pixels='many' is not supported"),
        ({"strategy": "none", "min_pixels": 5000, "max_pixels": 4000}, "min_pixels=5000 is above max_pixels=4000"),
        ({"strategy": "none", "dtype": "fp8"}, "dtype='fp8' is not supported; accepted values: auto, float32"),
        (
            {"strategy": "none", "max_pixel": 4000},
            r"unknown model args \['max_pixel'\]; accepted: pretrained, system_prompt, max_num_frames, fps, "
            r"total_pixels, min_pixels, max_pixels, lossless_images, revision",
        ),
    ],
)
def test_bad_model_args_fail_before_weights_load(checkpoint: Path, args: dict, message: str) -> None:
    with mock.patch.object(Qwen3VL.model_class, "from_pretrained", side_effect=AssertionError("loaded")):
        with pytest.raises((PruningConfigError, ValueError), match=message):
            Qwen3VLFoPru(pretrained=str(checkpoint), device="cpu", **args)


def test_checkpoints_of_another_family_are_refused_before_weights_load(checkpoint: Path, tmp_path: Path) -> None:
    qwen2_vl = save_random_qwen_vl(tmp_path / "qwen2_vl", "qwen2_vl")
    with mock.patch.object(Qwen3VL.model_class, "from_pretrained", side_effect=AssertionError("loaded")):
        with pytest.raises(ValueError, match="'qwen2_vl' checkpoint; qwen3_vl_fopru wraps Qwen3VLForConditional"):
            Qwen3VLFoPru(pretrained=str(qwen2_vl), device="cpu", strategy="rank", keep_ratio=0.5)


def test_make_random_saves_a_checkpoint_the_adapter_accepts(tmp_path: Path) -> None:
    from lmms_eval.models import get_model

    from fopru_eval.tools.cli import main

    assert main(["make-random", "qwen3_vl_fopru", str(tmp_path / "checkpoint")]) == 0
    assert get_model("qwen3_vl_fopru") is Qwen3VLFoPruChat
    assert get_model("qwen3_vl_fopru", force_simple=True) is Qwen3VLFoPru
    Qwen3VL.check_checkpoint(str(tmp_path / "checkpoint"), "qwen3_vl_fopru")  # raises if it is not the family's

"""llava_fopru against independent references: the unpruned HF model, and a hand-built forward over kept tokens."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from lmms_eval.api.instance import Instance
from transformers import AutoProcessor, LlavaForConditionalGeneration

from conftest import draw_image, greedy_decode_by_hand, llava_hf_simple_prompt, user_turn
from fopru_eval.core.config import PruningConfig, PruningConfigError
from fopru_model_adapters.base import Prompt
from fopru_model_adapters.llava import LlavaFoPru

QUESTIONS = ["What color is the shape?", "Which shape is in the top left cell of the picture?", "Is it red?"]
IMAGES = [
    draw_image("red", (4, 4, 20, 20)),
    draw_image("blue", (30, 20, 60, 50), size=(80, 40)),
    draw_image("green", (10, 30, 30, 50), size=(40, 70)),
]


def prompts(count: int = 3) -> list[Prompt]:
    return [
        Prompt(user_turn(q, [image]), [image], f"t/test/{i}")
        for i, (q, image) in enumerate(zip(QUESTIONS, IMAGES, strict=True))
    ][:count]


def adapter(path: Path, **args) -> LlavaFoPru:
    return LlavaFoPru(pretrained=str(path), device="cpu", **args)


def hf_inputs(processor, prompts: list[Prompt]) -> dict:
    texts = [processor.apply_chat_template(p.messages, add_generation_prompt=True, tokenize=False) for p in prompts]
    return processor(images=[i for p in prompts for i in p.images], text=texts, padding=True, return_tensors="pt")


def test_keep_ratio_one_equals_none(tiny_llava: Path) -> None:
    ours = adapter(tiny_llava, strategy="rank", keep_ratio=1.0)
    none = PruningConfig(strategy="none")
    with torch.inference_mode():
        full = ours.model(**ours.prepare(prompts()).inputs).logits
        ours.pruning = none
        assert torch.equal(full, ours.model(**ours.prepare(prompts()).inputs).logits)


def feature_layer_logits(model: LlavaForConditionalGeneration, pixel_values: torch.Tensor) -> np.ndarray:
    """(heads, tokens, tokens) pre-softmax scaled logits of the feature layer (L-2), recomputed in float64 from its
    input hidden state with its own layer norm and q/k projections."""
    tower = model.model.vision_tower
    hidden = tower(pixel_values, output_hidden_states=True).hidden_states
    layer = getattr(tower, "vision_model", tower).encoder.layers[len(hidden) - 1 - 2]
    x = torch.nn.functional.layer_norm(
        hidden[len(hidden) - 1 - 2][0].double(), layer.layer_norm1.normalized_shape,
        layer.layer_norm1.weight.double(), layer.layer_norm1.bias.double(), layer.layer_norm1.eps,
    )  # fmt: skip
    attn = layer.self_attn
    q = (x @ attn.q_proj.weight.double().T + attn.q_proj.bias.double()).numpy()
    k = (x @ attn.k_proj.weight.double().T + attn.k_proj.bias.double()).numpy()
    heads, d = attn.num_heads, attn.head_dim
    return np.stack([q[:, h * d : (h + 1) * d] @ k[:, h * d : (h + 1) * d].T * d**-0.5 for h in range(heads)])


def reference_pruned_logits(
    path: Path, prompt: Prompt, strategy: str, ratio: float, original_positions: bool = False, scores: str = "softmax"
) -> torch.Tensor:
    """Independent of the adapter: eager attention maps (or the feature layer's logits recomputed in float64) ->
    float64 significance -> numpy selection -> embeddings spliced by hand -> the language model on inputs_embeds."""
    model = LlavaForConditionalGeneration.from_pretrained(path, attn_implementation="eager").eval()
    processor = AutoProcessor.from_pretrained(path)
    inputs = hf_inputs(processor, [prompt])
    with torch.no_grad():
        tower = model.model.vision_tower(inputs["pixel_values"], output_attentions=True)
        attention = tower.attentions[len(tower.attentions) - 2][0].double().mean(0)[1:, 1:].numpy()
        if scores == "logits":
            attention = feature_layer_logits(model, inputs["pixel_values"]).mean(0)[1:, 1:]
        column, row = attention.mean(axis=0), attention.mean(axis=1)
        significance = column if column.var() > row.var() else row
        side = int(round(len(significance) ** 0.5))
        if strategy == "rank":
            keep = int(np.floor(len(significance) * ratio))
            kept = np.sort(np.argsort(-significance, kind="stable")[:keep])
        else:
            rows = int(np.floor(side * ratio))
            best = np.sort(np.argsort(-significance.reshape(side, side).sum(1), kind="stable")[:rows])
            kept = np.concatenate([np.arange(r * side, (r + 1) * side) for r in best])
        features = model.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output[0]
        ids = inputs["input_ids"][0]
        placeholders = (ids == model.config.image_token_id).nonzero().flatten()
        start = int(placeholders[0])
        embed = model.get_input_embeddings()
        sequence = torch.cat(
            [embed(ids[:start]), features[torch.from_numpy(kept)], embed(ids[start + len(placeholders) :])]
        )
        positions = None
        if original_positions:
            after = torch.arange(start + len(placeholders), len(ids))
            positions = torch.cat([torch.arange(start), start + torch.from_numpy(kept), after]).unsqueeze(0)
        hidden = model.model.language_model(
            inputs_embeds=sequence.unsqueeze(0), position_ids=positions
        ).last_hidden_state
        return model.lm_head(hidden)


@pytest.fixture(scope="module")
def sharp_llava(tiny_llava: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint with its vision q/k projections scaled by 6: at random init the logits are so small that
    softmax is nearly linear in them and both readings rank alike; sharper attention tells them apart."""
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava)
    tower = model.model.vision_tower
    for layer in getattr(tower, "vision_model", tower).encoder.layers:
        layer.self_attn.q_proj.weight.data *= 6
        layer.self_attn.k_proj.weight.data *= 6
    path = tmp_path_factory.mktemp("sharp_llava")
    model.save_pretrained(path)
    AutoProcessor.from_pretrained(tiny_llava).save_pretrained(path)
    return path


def test_the_two_readings_keep_different_tokens_on_a_sharp_tower(sharp_llava: Path) -> None:
    kept = []
    for scores in ("softmax", "logits"):
        with torch.inference_mode():
            batch = adapter(sharp_llava, strategy="rank", keep_ratio=0.5, scores=scores).prepare(prompts(1))
        kept.append(batch.inputs["mm_encoder_outputs"]["image"].pooler_output[0])
    assert kept[0].shape == kept[1].shape and not torch.equal(kept[0], kept[1])


@pytest.mark.parametrize("scores", ["softmax", "logits"])
@pytest.mark.parametrize(("strategy", "ratio"), [("rank", 0.25), ("rank", 0.5), ("row", 0.5), ("row", 0.34)])
def test_pruned_run_equals_a_reference_over_only_the_kept_tokens(
    tiny_llava: Path, sharp_llava: Path, strategy: str, ratio: float, scores: str
) -> None:
    path = tiny_llava if scores == "softmax" else sharp_llava
    ours = adapter(path, strategy=strategy, keep_ratio=ratio, scores=scores)
    prompt = prompts(1)[0]
    with torch.inference_mode():
        batch = ours.prepare([prompt])
        logits = ours.model(**batch.inputs).logits
    expected = reference_pruned_logits(path, prompt, strategy, ratio, scores=scores)
    assert logits.shape == expected.shape
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    assert batch.visual_tokens_kept == [36 * ratio // 1 if strategy == "rank" else 6 * int(6 * ratio)]


def test_original_positions_keep_each_token_where_it_was(tiny_llava: Path) -> None:
    compact = adapter(tiny_llava, strategy="rank", keep_ratio=0.25)
    original = adapter(tiny_llava, strategy="rank", keep_ratio=0.25, positions="original")
    prompt = prompts(1)[0]
    with torch.inference_mode():
        original_logits = original.model(**original.prepare([prompt]).inputs).logits
        compact_logits = compact.model(**compact.prepare([prompt]).inputs).logits
    expected = reference_pruned_logits(tiny_llava, prompt, "rank", 0.25, original_positions=True)
    torch.testing.assert_close(original_logits, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(original_logits, compact_logits, atol=1e-4)


def test_original_positions_carry_through_generation(tiny_llava: Path) -> None:
    """Greedy generate() equals a step-by-step decode whose new tokens follow the last original position."""
    ours = adapter(tiny_llava, strategy="row", keep_ratio=0.5, positions="original")
    prompt = prompts(1)[0]
    [answer] = ours._generate([prompt], {"max_new_tokens": 5})
    with torch.inference_mode():
        inputs = ours.prepare([prompt]).inputs
    tokens = greedy_decode_by_hand(ours, inputs, steps=5)
    assert answer.text == ours.tokenizer.decode(tokens, skip_special_tokens=True)
    # 3 of 6 rows were dropped, so the last prompt token sits 18 positions beyond the pruned length.
    assert int(inputs["position_ids"][0, -1]) == inputs["input_ids"].shape[1] - 1 + 18


@pytest.mark.parametrize("strategy", ["rank", "row", "random", "none"])
def test_batching_does_not_change_answers(tiny_llava: Path, strategy: str) -> None:
    args = {"strategy": strategy} if strategy == "none" else {"strategy": strategy, "keep_ratio": 0.25}
    ours = adapter(tiny_llava, **args)
    gen = {"max_new_tokens": 6, "temperature": 0}
    one_by_one = [ours._generate([p], gen)[0] for p in prompts()]
    batched = ours._generate(prompts(), gen)
    assert [a.text for a in batched] == [a.text for a in one_by_one]
    assert [a.token_counts.to_dict() for a in batched] == [a.token_counts.to_dict() for a in one_by_one]


def test_random_selection_is_seeded_per_doc(tiny_llava: Path) -> None:
    ours = adapter(tiny_llava, strategy="random", keep_ratio=0.25, seed=3)

    def kept_features() -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat(ours.prepare(prompts()).inputs["mm_encoder_outputs"]["image"].pooler_output)

    first = kept_features()
    assert torch.equal(first, kept_features())
    ours.pruning = PruningConfig(strategy="random", keep_ratio=0.25, seed=4)
    assert not torch.equal(first, kept_features())


def requests(kind: str, docs: list[dict]) -> list[Instance]:
    def visuals(doc: dict) -> list:
        return [doc["image"]] if doc["image"] is not None else []

    out = []
    for i, doc in enumerate(docs):
        if kind == "generate_until":
            args = (doc["q"], {"max_new_tokens": 4, "until": ["\n\n"]}, visuals, i, "t", "test")
        else:
            args = (doc["q"], " red", visuals, i, "t", "test")
        out.append(Instance(kind, args, idx=0, metadata={"task": "t", "doc_id": i, "repeats": 1}))
    return out


def test_requests_keep_their_order_and_text_only_docs_run(tiny_llava: Path) -> None:
    ours = adapter(tiny_llava, strategy="rank", keep_ratio=0.25, batch_size=2)
    docs = [{"q": q, "image": image} for q, image in zip(QUESTIONS, IMAGES, strict=True)] + [
        {"q": "Say hi.", "image": None}
    ]
    ours.task_dict = {"t": {"test": docs}}
    batched = ours.generate_until(requests("generate_until", docs))
    singles = [ours.generate_until(requests("generate_until", docs)[i : i + 1])[0] for i in range(len(docs))]
    assert [r.text for r in batched] == [r.text for r in singles]
    assert [r.token_counts.visual_tokens_kept for r in batched] == [9, 9, 9, 0]
    assert [r.token_counts.visual_tokens_total for r in batched] == [36, 36, 36, 0]
    assert batched[3].token_counts.input_tokens < batched[0].token_counts.input_tokens


def test_loglikelihood_is_the_mean_token_loss_of_the_continuation(tiny_llava: Path) -> None:
    ours = adapter(tiny_llava, strategy="none", batch_size=2)
    docs = [{"q": q, "image": image} for q, image in zip(QUESTIONS, IMAGES, strict=True)]
    ours.task_dict = {"t": {"test": docs}}
    results = ours.loglikelihood(requests("loglikelihood", docs))
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava).eval()
    processor = AutoProcessor.from_pretrained(tiny_llava)
    for result, prompt in zip(results, prompts(), strict=True):
        inputs = hf_inputs(processor, [llava_hf_simple_prompt(processor, prompt)])
        target = processor.tokenizer.encode(" red", add_special_tokens=False)
        ids = torch.cat([inputs["input_ids"], torch.tensor([target])], dim=1)
        labels = torch.full_like(ids, -100)
        labels[0, -len(target) :] = torch.tensor(target)
        with torch.no_grad():
            output = model(input_ids=ids, pixel_values=inputs["pixel_values"], labels=labels)
        loss, is_greedy = result.text
        assert loss == pytest.approx(output.loss.item(), rel=1e-5)
        assert is_greedy == bool((output.logits[0, -len(target) - 1 : -1].argmax(-1) == torch.tensor(target)).all())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"strategy": "rank", "keep_ratio": 2}, "0 < keep_ratio <= 1"),
        ({"strategy": "rank", "keep_tokens": 0}, "keep_tokens=0"),
        ({"strategy": "rank", "keep_ratio": 0.5, "keep_tokens": 3}, "exclusive"),
        ({"strategy": "prune", "keep_ratio": 0.5}, "accepted values: rank, row, random, none"),
        ({"strategy": "rank", "keep_ratio": 0.5, "significance": "max"}, "accepted values: auto, column, row"),
        ({"strategy": "rank", "keep_ratio": 0.5, "batch_size": "auto"}, "batch_size='auto'"),
        ({"strategy": "rank", "keep_ratio": 0.5, "dtype": "bf16"}, "accepted values: auto, float32, float16, bfloat16"),
        ({"strategy": "rank", "keep_ratio": 0.5, "keep_raito": 0.5}, r"unknown model args \['keep_raito'\]"),
    ],
)
def test_bad_model_args_fail_before_weights_load(tiny_llava: Path, args: dict, message: str) -> None:
    with mock.patch.object(LlavaForConditionalGeneration, "from_pretrained", side_effect=AssertionError("loaded")):
        with pytest.raises((PruningConfigError, ValueError), match=message):
            adapter(tiny_llava, **args)


def test_a_checkpoint_that_is_not_llava_is_refused_before_weights_load(tmp_path: Path) -> None:
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(
        tmp_path
    )
    with mock.patch.object(LlavaForConditionalGeneration, "from_pretrained", side_effect=AssertionError("loaded")):
        with pytest.raises(ValueError, match="'llama' checkpoint; llava_fopru wraps LlavaForConditionalGeneration"):
            adapter(tmp_path, strategy="rank", keep_ratio=0.5)


def test_a_generation_error_fails_loudly_naming_the_docs(tiny_llava: Path) -> None:
    ours = adapter(tiny_llava, strategy="rank", keep_ratio=0.5)
    with mock.patch.object(ours.model, "generate", side_effect=RuntimeError("out of memory")):
        with pytest.raises(RuntimeError, match="generation failed for t/test/0, t/test/1"):
            ours._generate(prompts(2), {"max_new_tokens": 2})
    with mock.patch.object(ours.model, "forward", side_effect=RuntimeError("out of memory")):
        with pytest.raises(RuntimeError, match="loglikelihood failed for t/test/0, t/test/1"):
            ours._score(prompts(2), ["yes", "no"])


def test_non_image_visuals_are_refused(tiny_llava: Path) -> None:
    ours = adapter(tiny_llava, strategy="rank", keep_ratio=0.5)
    ours.task_dict = {"t": {"test": [{"q": "x", "image": "clip.mp4"}]}}
    with pytest.raises(TypeError, match="t doc 0 gives a str; only PIL images are supported"):
        ours.generate_until(requests("generate_until", ours.task_dict["t"]["test"]))


@pytest.mark.parametrize("chat", [False, True])
def test_multi_round_follows_the_task_until_it_ends(tiny_llava: Path, chat: bool) -> None:
    """Each round's prompt comes from the task, given the answers so far; the result lists every round's answer."""
    ours = adapter(tiny_llava, strategy="rank", keep_ratio=0.5)
    ours.is_simple = not chat
    docs = [{"q": "First question?", "image": IMAGES[0]}]
    ours.task_dict = {"t": {"test": docs}}
    seen = []

    def next_round(doc, previous_output=None, round_idx=None, previous_round_info=None):
        seen.append((round_idx, list(previous_output)))
        terminal = round_idx == 3
        text = f"Round {round_idx}: what next?"
        if chat:
            return user_turn(text, [doc["image"]]), terminal, previous_output, {"round": round_idx}
        return [doc["image"]], text, terminal, previous_output, {"round": round_idx}

    def doc_to_messages(doc, **kwargs):
        return next_round(doc, **kwargs) if kwargs else user_turn(doc["q"], [doc["image"]])

    gen = {"max_new_tokens": 3}
    if chat:
        args = ("First question?", doc_to_messages, gen, 0, "t", "test")
    else:
        args = ("First question?", gen, lambda doc: [doc["image"]], next_round, 0, "t", "test")
    request = Instance("generate_until_multi_round", args, idx=0, metadata={"task": "t", "doc_id": 0, "repeats": 1})
    [result] = ours.generate_until_multi_round([request])
    assert [round_idx for round_idx, _ in seen] == [1, 2, 3]
    assert [len(previous) for _, previous in seen] == [1, 2, 3]
    assert len(result.text) == 3 and result.text[:2] == seen[2][1][:2]
    # Three rounds, each with one image pruned to half of its 36 tokens.
    assert result.token_counts.visual_tokens_kept == 3 * 18 and result.token_counts.visual_tokens_total == 3 * 36


def test_the_vicuna_template_is_lmms_evals_own() -> None:
    """model_adapters/llava.py copies it (lmms-eval's module imports decord at import time)."""
    from lmms_eval.models.simple import llava_hf

    from fopru_model_adapters.llava import VICUNA_CHAT_TEMPLATE

    assert VICUNA_CHAT_TEMPLATE == llava_hf.VICUNA_CHAT_TEMPLATE

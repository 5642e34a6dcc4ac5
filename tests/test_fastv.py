"""FastV's in-LLM stage (``fopru_eval/families/llm_stage.py``) against references that share none of its code: the
attention row it scores with is each family's eager attention map; a generation through the stage is, token for token,
a reference that runs the LLM's layers one by one and drops the visual tokens by hand; its counts and FLOPs are exact.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial

import pytest
import torch

from conftest import draw_image, mixed_prompts
from fopru_eval.core.config import PruningConfig, PruningConfigError
from fopru_eval.core.flops import Blocks, causal_pairs, linear
from fopru_eval.families import FAMILIES, Family, Prompt, prune_batch
from fopru_eval.tools.checkpoints import qwen3_vl
from fopru_eval.tools.checkpoints.llava import build_random_llava
from fopru_eval.tools.checkpoints.llava_next import build_random_llava_next
from fopru_eval.tools.checkpoints.llava_onevision import build_random_llava_onevision
from fopru_eval.tools.checkpoints.qwen_vl import build_random_qwen_vl

# Each family's tiny model, deep enough that a layer follows the one FastV drops after (Qwen3-VL: its two DeepStack
# layers come first, so its LLM gets four layers here and drops after layer 2).
BUILDERS: dict[str, tuple[Callable, int]] = {
    "llava": (build_random_llava, 1),
    "llava_next": (build_random_llava_next, 1),
    "llava_onevision": (build_random_llava_onevision, 1),
    "qwen2_vl": (partial(build_random_qwen_vl, family="qwen2_vl"), 1),
    "qwen2_5_vl": (partial(build_random_qwen_vl, family="qwen2_5_vl"), 1),
    "qwen3_vl": (partial(qwen3_vl.build_random_qwen3_vl, dataclasses.replace(qwen3_vl.TINY, text_layers=4)), 2),
}


def family_of(name: str) -> tuple[Family, int]:
    build, layer = BUILDERS[name]
    model, processor = build()
    return FAMILIES[model.config.model_type](model.eval(), processor), layer


def prompts() -> list[Prompt]:
    return mixed_prompts(
        draw_image("red", (10, 10, 60, 50), size=(112, 84)),
        draw_image("blue", (20, 30, 50, 70), size=(84, 112)),
        draw_image("green", (10, 20, 40, 50), size=(56, 56)),
    )


def fastv(keep_tokens: int, layer: int) -> PruningConfig:
    return PruningConfig("fastv", keep_tokens=keep_tokens, options=(("llm_layer", layer),))


@pytest.mark.parametrize("name", BUILDERS)
def test_the_row_fastv_scores_with_is_the_eager_attention_map(name: str) -> None:
    """The last token's attention row of layer K - 1, computed by the stage from the layer's queries and keys while the
    model runs with SDPA, equals the row of the map the same layer returns under eager attention, averaged over heads
    (padding included: left-padded rows pay it nothing)."""
    family, layer = family_of(name)
    batch = prompts()
    pruned = prune_batch(family, fastv(4, layer), batch)
    with torch.inference_mode(), pruned.running() as stage:
        family.model(**pruned.inputs)
    unpruned = prune_batch(family, PruningConfig("none"), batch)
    assert torch.equal(unpruned.inputs["input_ids"], pruned.inputs["input_ids"])  # FastV feeds the LLM everything
    family.model.set_attn_implementation("eager")
    with torch.inference_mode():
        maps = family.model(**unpruned.inputs, output_attentions=True).attentions
    expected = maps[layer - 1][:, :, -1].float().mean(dim=1)
    torch.testing.assert_close(stage.attention_row, expected, rtol=1e-4, atol=1e-6)


def visual_runs(ids: torch.Tensor, token_id: int, per_image: int | None) -> list[torch.Tensor]:
    """The positions of each image's placeholders: runs of ``token_id`` (LLaVA-1.5's images of ``per_image`` tokens
    may touch)."""
    positions = (ids == token_id).nonzero().flatten()
    if per_image is not None:
        return list(positions.split(per_image))
    breaks = (positions[1:] != positions[:-1] + 1).nonzero().flatten() + 1
    return list(torch.tensor_split(positions, breaks))


def causal_mask(length: int, dtype: torch.dtype) -> torch.Tensor:
    mask = torch.full((length, length), torch.finfo(dtype).min, dtype=dtype).triu(1)
    return mask[None, None]


def generate_by_hand(family: Family, prompt: Prompt, keep_tokens: int, layer: int, steps: int) -> list[int]:
    """Greedy tokens for one prompt, FastV by hand: the unpruned model's layer-0 inputs (embeddings with the image
    features merged, rotary cos/sin), then every decoder layer called one by one, with no cache, each step over the
    whole sequence; layer K - 1's eager attention row (last prompt token, mean over heads) picks each image's
    ``keep_tokens`` tokens at the prefill, and from layer K on only those (and every text and generated token) remain,
    with the positions they had."""
    model = family.model
    language_model = model.model.language_model
    inputs = prune_batch(family, PruningConfig("none"), [prompt]).inputs
    captured = {}

    def keep_layer_inputs(module, args, kwargs):
        captured["hidden"] = args[0] if args else kwargs["hidden_states"]
        captured["rotary"] = kwargs["position_embeddings"]

    handle = language_model.layers[0].register_forward_pre_hook(keep_layer_inputs, with_kwargs=True)
    with torch.inference_mode():
        model(**inputs)
    handle.remove()
    hidden, (cos, sin) = captured["hidden"], captured["rotary"]
    ids = inputs["input_ids"][0]
    per_image = family.view_tokens(model.config) if family.model_type == "llava" else None
    runs = visual_runs(ids, model.config.image_token_id, per_image)
    # The next position: one past the largest the prompt used (Qwen's mRoPE numbers an image by its grid; its three
    # sections are the last three rows of position_ids, which transformers 5.25 prefixes with the text positions).
    mrope = inputs["position_ids"][-3:] if "position_ids" in inputs else None
    next_position = int(mrope.max()) + 1 if mrope is not None else ids.numel()
    model.set_attn_implementation("eager")
    kept, tokens = None, []
    with torch.inference_mode():
        for step in range(steps):
            length = hidden.shape[1]
            h, c, s = hidden, cos, sin
            for index, decoder_layer in enumerate(language_model.layers):
                if index == layer:
                    h, c, s = h[:, kept], c[:, kept], s[:, kept]
                mask = causal_mask(h.shape[1], h.dtype)
                if index == layer - 1 and kept is None:  # the prefill's row picks the kept tokens
                    _, weights = decoder_layer.self_attn(
                        hidden_states=decoder_layer.input_layernorm(h), position_embeddings=(c, s), attention_mask=mask
                    )
                    row = weights[0, :, -1].float().mean(dim=0)
                    keep = torch.ones(length, dtype=torch.bool)
                    for run in runs:
                        keep[run] = False
                        order = torch.sort(row[run], descending=True, stable=True).indices
                        keep[run[order[:keep_tokens]]] = True
                    kept = keep.nonzero().flatten()
                h = decoder_layer(h, attention_mask=mask, position_embeddings=(c, s))
                h = h[0] if isinstance(h, tuple) else h
            token = int(model.lm_head(language_model.norm(h))[0, -1].argmax())
            tokens.append(token)
            # The new token joins every layer: its embedding, and the rotary embedding of the next position.
            embedding = language_model.embed_tokens(torch.tensor([[token]]))
            position = torch.tensor([[next_position + step]])
            if mrope is not None:
                position = position.expand(3, 1, 1)
            new_cos, new_sin = language_model.rotary_emb(embedding, position)
            hidden = torch.cat([hidden, embedding], dim=1)
            cos, sin = torch.cat([cos, new_cos], dim=1), torch.cat([sin, new_sin], dim=1)
            kept = torch.cat([kept, torch.tensor([length])])
    model.set_attn_implementation("sdpa")
    return tokens


@pytest.mark.parametrize("name", ["llava", "qwen2_vl"])
def test_fastv_generates_as_dropping_the_tokens_by_hand(name: str) -> None:
    """A batch of mixed prompts (two images in one, none in another) generated through the stage, with the KV cache,
    answers each prompt token for token as the by-hand reference on that prompt alone (batch 1), and reports what the
    layers from K on kept."""
    family, layer = family_of(name)
    batch, keep_tokens, steps = prompts(), 5, 5
    pruned = prune_batch(family, fastv(keep_tokens, layer), batch)
    eos = family.processor.tokenizer.eos_token_id
    with torch.inference_mode(), pruned.running():
        sequences = family.model.generate(
            **pruned.inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, pad_token_id=eos
        )
    generated = sequences[:, pruned.inputs["input_ids"].shape[1] :].tolist()
    expected = [generate_by_hand(family, prompt, keep_tokens, layer, steps) for prompt in batch]
    assert generated == expected
    assert len({tuple(row) for row in generated}) > 1  # the random model does look at its input
    per_image = family.view_tokens(family.model.config) if name == "llava" else None
    image_sizes = [
        [run.numel() for run in visual_runs(ids[mask.bool()], family.model.config.image_token_id, per_image)]
        for ids, mask in zip(pruned.inputs["input_ids"], pruned.inputs["attention_mask"], strict=True)
    ]
    assert pruned.visual_tokens_kept == [sum(min(keep_tokens, size) for size in sizes) for sizes in image_sizes]


def test_fastv_flops_count_the_first_layers_at_full_length() -> None:
    """Prefill FLOPs: the tower over every patch, LLM layers 0 .. K - 1 over the whole prompt, layers K .. over what
    they kept, the LM head once: from the model's dimensions, independently of ``llm_prefill_flops``."""
    family, layer = family_of("llava")
    batch = prompts()
    pruned = prune_batch(family, fastv(5, layer), batch)
    unpruned = prune_batch(family, PruningConfig("none"), batch)
    with torch.inference_mode(), pruned.running():
        family.model(**pruned.inputs)
    text = family.model.config.text_config
    head_dim = text.hidden_size // text.num_attention_heads
    blocks = Blocks(text.num_hidden_layers, text.hidden_size, text.num_attention_heads, text.num_key_value_heads,
                    head_dim, text.intermediate_size, gated=True)  # fmt: skip
    for i, prompt in enumerate(batch):
        tokens = unpruned.input_tokens[i]
        after = tokens - (family.view_tokens(family.model.config) - 5) * len(prompt.images)
        llm = blocks.flops(tokens, causal_pairs(tokens), layers=layer)
        llm += blocks.flops(after, causal_pairs(after), layers=text.num_hidden_layers - layer)
        llm += linear(1, text.hidden_size, text.vocab_size)
        vision = unpruned.prefill_flops[i] - family.llm_flops(tokens)
        assert pruned.prefill_flops[i] == vision + llm
        assert pruned.input_tokens[i] == tokens  # the LLM is fed every token; layers K.. see fewer
        assert pruned.visual_tokens_total[i] == unpruned.visual_tokens_total[i]


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        (
            "llava",
            {"llm_layer": 2},
            r"llm_layer=2 is out of range for this checkpoint; accepted values: 1 <= llm_layer <= 1",
        ),
        ("qwen3_vl", {"llm_layer": 1}, r"accepted values: 2 <= llm_layer <= 3 \(DeepStack adds visual features"),
        ("llava", {"positions": "compact"}, r"positions='compact' is not supported with strategy=fastv"),
        (
            "llava",
            {"contextual_ratio": 0.5},
            r"contextual_ratio does not apply to strategy=fastv; its settings: llm_layer",
        ),
    ],
)
def test_fastv_settings_that_cannot_hold_are_refused_before_weights_load(name: str, args: dict, message: str) -> None:
    family, _ = family_of(name)
    with pytest.raises(PruningConfigError, match=message):
        config, _ = PruningConfig.from_model_args({"strategy": "fastv", "keep_tokens": 4, **args})
        type(family).check_pruning(family.model.config, config, "fastv_test")


def test_a_sliding_window_llm_runs_only_while_the_sequence_fits_the_window() -> None:
    """Within the window a sliding-window mask is the full causal mask the stage builds; past it, the stage stops
    loudly (Mistral's LLaVA-NeXT declares a window; Qwen2's is off unless use_sliding_window)."""
    from types import SimpleNamespace

    from fopru_eval.families.llm_stage import LLMStage

    LLMStage._check_window(SimpleNamespace(sliding_window=8), 8)
    LLMStage._check_window(SimpleNamespace(sliding_window=8, use_sliding_window=False), 100)
    LLMStage._check_window(SimpleNamespace(), 100)  # Llama: no window
    with pytest.raises(RuntimeError, match="sliding window of 8 tokens and this sequence has 9"):
        LLMStage._check_window(SimpleNamespace(sliding_window=8), 9)


@pytest.mark.parametrize("name", ["llava", "qwen2_vl"])
def test_fastv_keeping_every_token_is_the_unpruned_model(name: str) -> None:
    """With the whole budget the stage is transparent: the same logits at every position as the unpruned model (the
    shortened layers see every token, under the mask and rotary embeddings the stage built itself)."""
    family, layer = family_of(name)
    batch = prompts()
    pruned = prune_batch(family, PruningConfig("fastv", keep_ratio=1.0, options=(("llm_layer", layer),)), batch)
    unpruned = prune_batch(family, PruningConfig("none"), batch)
    with torch.inference_mode():
        with pruned.running():
            ours = family.model(**pruned.inputs).logits
        theirs = family.model(**unpruned.inputs).logits
    mask = unpruned.inputs["attention_mask"].bool()
    torch.testing.assert_close(ours[mask], theirs[mask], rtol=1e-5, atol=1e-5)
    assert pruned.visual_tokens_kept == unpruned.visual_tokens_kept

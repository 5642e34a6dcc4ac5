"""What every family's adapter owes, one contract parametrized over the six families and both checkpoint layouts (as
transformers 5 writes them, and as the hub stores the real ones): strategy=none is the unpruned Hugging Face model
(logits and greedy tokens), with each sample's visual tokens (and row markers) counting exactly the image
placeholders the processor wrote; a checkpoint of another family and a misspelt model arg are refused before any
weights load. The family files hold what is each family's own: its layout, its references for pruned runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from conftest import draw_image, mixed_prompts
from fopru_eval.core.registry import PruningConfigError
from fopru_eval.tools.checkpoints.hub_layout import HUB_REPOS, save_as_hub
from fopru_eval.tools.checkpoints.llava import save_random_llava
from fopru_eval.tools.checkpoints.llava_next import save_random_llava_next
from fopru_eval.tools.checkpoints.llava_onevision import save_random_llava_onevision
from fopru_eval.tools.checkpoints.qwen3_vl import save_random_qwen3_vl
from fopru_eval.tools.checkpoints.qwen_vl import save_random_qwen_vl
from fopru_model_adapters.base import FoPruLMM, Prompt
from fopru_model_adapters.llava import LlavaFoPru
from fopru_model_adapters.llava_next import LlavaNextFoPru
from fopru_model_adapters.llava_onevision import LlavaOnevisionFoPru
from fopru_model_adapters.qwen3_vl import Qwen3VLFoPru
from fopru_model_adapters.qwen_vl import Qwen2_5_VLFoPru, Qwen2VLFoPru


@dataclass(frozen=True)
class Case:
    adapter: type[FoPruLMM]
    save: Callable[[Path], Path]
    args: dict[str, Any]  # float32 everywhere (the references load so), pixel limits that keep the images small


CASES = {
    "llava": Case(LlavaFoPru, save_random_llava, {}),
    "llava_next": Case(LlavaNextFoPru, save_random_llava_next, {}),
    "llava_onevision": Case(LlavaOnevisionFoPru, save_random_llava_onevision, {}),
    "qwen2_vl": Case(Qwen2VLFoPru, partial(save_random_qwen_vl, family="qwen2_vl"), {"max_pixels": 200704}),
    "qwen2_5_vl": Case(
        Qwen2_5_VLFoPru, partial(save_random_qwen_vl, family="qwen2_5_vl"), {"min_pixels": 3136, "max_pixels": 200704}
    ),
    "qwen3_vl": Case(Qwen3VLFoPru, save_random_qwen3_vl, {"min_pixels": 4096, "max_pixels": 262144}),
}
LAYOUTS = ("transformers", "hub")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    built: dict[tuple[str, str], Path] = {}

    def checkpoint(family: str, layout: str) -> Path:
        if (family, layout) not in built:
            root = tmp_path_factory.mktemp(family)
            built[family, "transformers"] = CASES[family].save(root / "transformers")
            built[family, "hub"] = save_as_hub(built[family, "transformers"], HUB_REPOS[family], root / "hub")
        return built[family, layout]

    return checkpoint


def prompts() -> list[Prompt]:
    return mixed_prompts(
        draw_image("red", (10, 10, 60, 50), size=(168, 112)),
        draw_image("blue", (20, 30, 90, 150), size=(112, 196)),
        draw_image("green", (10, 20, 60, 70), size=(84, 84)),
    )


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("family", CASES)
def test_none_is_the_unpruned_hf_model(checkpoints, family: str, layout: str) -> None:
    """The Hugging Face model and processor loaded as the adapter loads them (its processor arguments, e.g. lmms-eval's
    pixel limits), fed the processor's own output for the same conversations and images: equal logits, equal greedy
    tokens; the adapter's counts are the processor's image placeholders, all kept."""
    path = checkpoints(family, layout)
    ours = CASES[family].adapter(pretrained=str(path), device="cpu", strategy="none", dtype="float32", batch_size=4,
                                 **CASES[family].args)  # fmt: skip
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(path, **ours.processor_kwargs())
    batch = prompts()
    texts = [processor.apply_chat_template(p.messages, add_generation_prompt=True, tokenize=False) for p in batch]
    images = [ours.family.prepare_image(image) for p in batch for image in p.images]
    inputs = processor(images=images, text=texts, padding=True, padding_side="left", return_tensors="pt")
    eos = ours.eot_token_id
    greedy = {"max_new_tokens": 6, "do_sample": False, "eos_token_id": eos, "pad_token_id": eos}
    with torch.inference_mode():
        pruned = ours.prepare(batch)
        assert torch.equal(ours.model(**pruned.inputs).logits, model(**inputs).logits)
        ours_tokens = ours.model.generate(**pruned.inputs, **greedy)
        hf_tokens = model.generate(**inputs, **greedy)
    assert torch.equal(ours_tokens, hf_tokens)
    new_tokens = hf_tokens[:, inputs["input_ids"].shape[1] :]
    assert len({tuple(row) for row in new_tokens.tolist()}) > 1  # the random model does look at its input
    # The adapter's own generation path, answers finished as lmms-eval's adapter finishes them (Qwen2-VL strips).
    expected = processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    answers = ours._generate(batch, {"max_new_tokens": 6, "temperature": 0})
    strip = getattr(ours, "strip_answers", False)
    assert [a.text for a in answers] == [text.strip() if strip else text for text in expected]
    placeholders = (inputs["input_ids"] == model.config.image_token_id).sum(dim=1).tolist()
    markers = pruned.newline_tokens_total or [0] * len(batch)
    assert [v + m for v, m in zip(pruned.visual_tokens_total, markers, strict=True)] == placeholders
    assert pruned.visual_tokens_kept == pruned.visual_tokens_total
    assert pruned.input_tokens == inputs["attention_mask"].sum(dim=1).tolist()


@pytest.mark.parametrize("family", CASES)
def test_a_checkpoint_of_another_family_is_refused_before_weights_load(checkpoints, family: str) -> None:
    other = "qwen2_vl" if family.startswith("llava") else "llava"
    cls = CASES[family].adapter
    with mock.patch.object(cls.family_class.model_class, "from_pretrained", side_effect=AssertionError("loaded")):
        with pytest.raises(ValueError, match=rf"is a '{other}' checkpoint; {cls.model_name} wraps"):
            cls(pretrained=str(checkpoints(other, "hub")), device="cpu", strategy="none")


@pytest.mark.parametrize("family", CASES)
def test_a_misspelt_model_arg_is_refused_before_weights_load(checkpoints, family: str) -> None:
    cls = CASES[family].adapter
    with mock.patch.object(cls.family_class.model_class, "from_pretrained", side_effect=AssertionError("loaded")):
        with pytest.raises(
            ValueError, match=r"unknown model args \['keep_raito'\]; accepted: pretrained, .*keep_ratio"
        ):
            cls(pretrained=str(checkpoints(family, "hub")), device="cpu", strategy="rank", keep_raito=0.5)


# The peer methods at a budget every tiny view can give; FastV after the tiny LLMs' first layer. Each runs wherever
# it means something; elsewhere it is refused before weights load, naming why.
PEER_ARGS = {
    "visionzip": {"keep_tokens": 4},
    "vispruner": {"keep_tokens": 4},
    "divprune": {"keep_tokens": 4},
    "fastv": {"keep_tokens": 4, "llm_layer": 1},
}
REFUSED = {
    **{
        (family, method): "has no CLS token"
        for family in ("llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl")
        for method in ("visionzip", "vispruner")
    },  # fmt: skip
    # The tiny Qwen3-VL's two LLM layers both precede its DeepStack's last injection (tests/test_fastv.py runs FastV
    # on a deeper one).
    ("qwen3_vl", "fastv"): r"llm_layer=1 is out of range .* \(DeepStack adds visual features",
}


@pytest.mark.parametrize("method", PEER_ARGS)
@pytest.mark.parametrize("family", CASES)
def test_each_peer_method_runs_batched_as_alone_or_is_refused_before_weights_load(
    checkpoints, family: str, method: str
) -> None:
    """Through the adapter's own generation path: one answer per prompt, each the answer the prompt gets alone (batch
    1), with its kept visual tokens within the per-view budget; or, where the method has no meaning, a refusal before
    the weights load."""
    cls, path = CASES[family].adapter, str(checkpoints(family, "transformers"))
    args = {"pretrained": path, "device": "cpu", "strategy": method, "dtype": "float32", **PEER_ARGS[method]}
    if (family, method) in REFUSED:
        with mock.patch.object(cls.family_class.model_class, "from_pretrained", side_effect=AssertionError("loaded")):
            with pytest.raises(PruningConfigError, match=REFUSED[family, method]):
                cls(**args, **CASES[family].args)
        return
    ours = cls(**args, batch_size=4, **CASES[family].args)
    batch, gen_kwargs = prompts(), {"max_new_tokens": 3, "temperature": 0}
    together = ours._generate(batch, gen_kwargs)
    alone = [ours._generate([prompt], gen_kwargs)[0] for prompt in batch]
    assert [answer.text for answer in together] == [answer.text for answer in alone]
    for prompt, answer, single in zip(batch, together, alone, strict=True):
        counts = answer.token_counts
        assert counts.visual_tokens_kept == single.token_counts.visual_tokens_kept
        views = 2 if family.startswith("llava_") else 1  # a NeXT / OneVision image: its base view and its mosaic
        assert 0 < counts.visual_tokens_kept <= 4 * views * len(prompt.images) or not prompt.images
        assert counts.visual_tokens_kept <= counts.visual_tokens_total

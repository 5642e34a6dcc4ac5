"""Video samples, pruned frame by frame, against independent references: the unpruned HF model, hand-built forwards
over only the kept tokens (LLaVA-OneVision: per-frame maps pooled 2 x 2 by hand, the video's newline kept; Qwen3-VL:
per-temporal-patch maps, DeepStack features and M-RoPE positions by hand), and one-by-one runs of mixed batches."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from lmms_tasks import evaluate, real_task_configs
from test_llava_onevision import bilinear_matrix
from test_qwen3_vl import PIXELS, positions_by_hand, reference_logits, reference_significance
from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

from conftest import draw_image, numpy_selection
from fopru_eval.core.config import PruningConfig
from fopru_eval.families import Prompt, prune_batch
from fopru_eval.families.driver import video_metadata
from fopru_eval.families.llava import Llava
from fopru_eval.tools.checkpoints.llava_onevision import save_random_llava_onevision
from fopru_eval.tools.checkpoints.qwen3_vl import save_random_qwen3_vl
from fopru_model_adapters.llava import LlavaFoPru
from fopru_model_adapters.llava_onevision import LlavaOnevisionFoPru
from fopru_model_adapters.qwen3_vl import Qwen3VLFoPru


def moving_square(frames: int, height: int, width: int, color: tuple[int, int, int]) -> np.ndarray:
    """(frames, height, width, 3) uint8 frames: a square crossing a noisy background, so every frame differs."""
    rng = np.random.default_rng(frames * 1000 + height + width)
    video = rng.integers(0, 60, (frames, height, width, 3), dtype=np.uint8)
    side = min(height, width) // 3
    for frame in range(frames):
        top, left = frame * (height - side) // max(frames - 1, 1), frame * (width - side) // max(frames - 1, 1)
        video[frame, top : top + side, left : left + side] = color
    return video


# 4 frames. LLaVA-OneVision: each frame one 6 x 6 SigLIP view pooled to 3 x 3, then one newline: 36 + 1 tokens.
# Qwen3-VL: 96 x 128 pixels, 6 x 8 patches of 16 merged to 3 x 4; 2 frames per temporal patch: 2 x 12 = 24 tokens.
VIDEO = moving_square(4, 96, 128, (255, 0, 0))
OTHER_VIDEO = moving_square(4, 96, 128, (0, 0, 255))
IMAGE = draw_image("green", (10, 20, 60, 70), size=(96, 96))


def turn(text: str, videos: int, images: list) -> list[dict]:
    content = [{"type": "video"}] * videos + [{"type": "image", "url": image} for image in images]
    return [{"role": "user", "content": [*content, {"type": "text", "text": text}]}]


def video_prompt(video: np.ndarray = VIDEO, key: str = "t/test/0") -> Prompt:
    return Prompt(turn("What moves?", 1, []), [], key, videos=[video])


def mixed_prompts() -> list[Prompt]:
    """A video, an image, and a doc with both (and a second video in another doc)."""
    return [
        video_prompt(),
        Prompt(turn("What color is it?", 0, [IMAGE]), [IMAGE], "t/test/1"),
        Prompt(turn("Is the picture in the video?", 1, [IMAGE]), [IMAGE], "t/test/2", videos=[OTHER_VIDEO]),
        video_prompt(OTHER_VIDEO, "t/test/3"),
    ]


def hf_inputs(processor, prompts: list[Prompt], **video_kwargs) -> dict:
    texts = [processor.apply_chat_template(p.messages, add_generation_prompt=True, tokenize=False) for p in prompts]
    images = [image for p in prompts for image in p.images] or None
    videos = [video for p in prompts for video in p.videos] or None
    return processor(images=images, videos=videos, text=texts, padding=True, return_tensors="pt", **video_kwargs)


@pytest.fixture(scope="module")
def tiny_onevision(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_llava_onevision(tmp_path_factory.mktemp("tiny_llava_onevision_video"))


@pytest.fixture(scope="module")
def tiny_qwen3_vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_qwen3_vl(tmp_path_factory.mktemp("tiny_qwen3_vl_video") / "checkpoint")


def onevision(path: Path, **args) -> LlavaOnevisionFoPru:
    return LlavaOnevisionFoPru(pretrained=str(path), device="cpu", **args)


def qwen3_vl(path: Path, **args) -> Qwen3VLFoPru:
    return Qwen3VLFoPru(pretrained=str(path), device="cpu", **{**PIXELS, "dtype": "float32", **args})


def qwen3_vl_hf(path: Path, **load_args) -> tuple:
    model = Qwen3VLFoPru.family_class.model_class.from_pretrained(path, **load_args).eval()
    size = {"shortest_edge": PIXELS["min_pixels"], "longest_edge": PIXELS["max_pixels"]}
    return model, AutoProcessor.from_pretrained(path, size=size)


# ----- strategy=none is the unpruned model -----------------------------------------------------------------------


def test_onevision_none_reproduces_the_unpruned_hf_model_exactly(tiny_onevision: Path) -> None:
    ours = onevision(tiny_onevision, strategy="none", batch_size=4)
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(tiny_onevision).eval()
    processor = AutoProcessor.from_pretrained(tiny_onevision)
    batch = mixed_prompts()
    with torch.inference_mode():
        prepared = ours.prepare(batch)
        inputs = hf_inputs(processor, batch)
        assert torch.equal(ours.model(**prepared.inputs).logits, model(**inputs).logits)
        gen = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": ours.eot_token_id}
        assert torch.equal(ours.model.generate(**prepared.inputs, **gen), model.generate(**inputs, **gen))
    image_tokens = prepared.visual_tokens_total[1]
    assert prepared.visual_tokens_total == [36, image_tokens, 36 + image_tokens, 36]
    assert prepared.visual_tokens_kept == prepared.visual_tokens_total
    assert prepared.newline_tokens_kept == prepared.newline_tokens_total


def test_qwen3_vl_none_reproduces_the_unpruned_hf_model_exactly(tiny_qwen3_vl: Path) -> None:
    ours = qwen3_vl(tiny_qwen3_vl, strategy="none", batch_size=4)
    model, processor = qwen3_vl_hf(tiny_qwen3_vl)
    # The adapter adds lmms-eval's system turn to every prompt: the HF model gets the prompts as sent.
    batch = [ours._with_system_turn(p) for p in mixed_prompts()]
    with torch.inference_mode():
        prepared = ours.prepare(batch)
        inputs = hf_inputs(processor, batch, do_sample_frames=False)
        assert inputs["video_grid_thw"].tolist() == [[2, 6, 8], [2, 6, 8], [2, 6, 8]]
        assert torch.equal(ours.model(**prepared.inputs).logits, model(**inputs).logits)
        eos = processor.tokenizer.eos_token_id
        gen = {"max_new_tokens": 8, "do_sample": False, "eos_token_id": eos, "pad_token_id": eos}
        assert torch.equal(ours.model.generate(**prepared.inputs, **gen), model.generate(**inputs, **gen))
    assert prepared.visual_tokens_total == [24, 9, 24 + 9, 24] == prepared.visual_tokens_kept


# ----- counts: the budget is per frame (LLaVA-OneVision) or per temporal patch (Qwen3-VL) -------------------------


@pytest.mark.parametrize(
    ("strategy", "budget", "kept"),
    [
        ("rank", {"keep_ratio": 0.5}, 4 * 4),  # floor(9 * 0.5) of each frame's 9
        ("rank", {"keep_tokens": 2}, 4 * 2),
        ("row", {"keep_ratio": 0.5}, 4 * 3),  # floor(3 * 0.5) = 1 row of 3 per frame
        ("row", {"keep_tokens": 6}, 4 * 6),  # 2 whole rows per frame
    ],
)
def test_onevision_keeps_the_budget_of_every_frame(
    tiny_onevision: Path, strategy: str, budget: dict, kept: int
) -> None:
    ours = onevision(tiny_onevision, strategy=strategy, **budget)
    with torch.inference_mode():
        prepared = ours.prepare([video_prompt()])
        unpruned = onevision(tiny_onevision, strategy="none").prepare([video_prompt()])
    assert prepared.visual_tokens_kept == [kept] and prepared.visual_tokens_total == [36]
    # The video's closing newline always stays.
    assert prepared.newline_tokens_kept == prepared.newline_tokens_total == [1]
    assert prepared.input_tokens == [unpruned.input_tokens[0] - (36 - kept)]


@pytest.mark.parametrize(
    ("strategy", "budget", "kept"),
    [
        ("rank", {"keep_ratio": 0.5}, 2 * 6),  # floor(12 * 0.5) of each temporal patch's 3 x 4
        ("rank", {"keep_tokens": 5}, 2 * 5),
        ("row", {"keep_ratio": 0.5}, 2 * 4),  # floor(3 * 0.5) = 1 row of 4
        ("row", {"keep_tokens": 8}, 2 * 8),  # 2 whole rows
    ],
)
def test_qwen3_vl_keeps_the_budget_of_every_temporal_patch(
    tiny_qwen3_vl: Path, strategy: str, budget: dict, kept: int
) -> None:
    ours = qwen3_vl(tiny_qwen3_vl, strategy=strategy, **budget)
    with torch.inference_mode():
        prepared = ours.prepare([video_prompt()])
        unpruned = qwen3_vl(tiny_qwen3_vl, strategy="none").prepare([video_prompt()])
    assert prepared.visual_tokens_kept == [kept] and prepared.visual_tokens_total == [24]
    assert prepared.input_tokens == [unpruned.input_tokens[0] - (24 - kept)]


def test_a_family_without_video_refuses_it_clearly(tiny_llava: Path) -> None:
    family = Llava.load(str(tiny_llava))
    with pytest.raises(ValueError, match=r"LLaVA-1\.5 \(Llava\) does not read videos"):
        prune_batch(family, PruningConfig("none"), [video_prompt()])


# ----- a pruned run is the model over only the kept tokens --------------------------------------------------------


def onevision_reference_logits(
    model: LlavaOnevisionForConditionalGeneration, processor, prompt: Prompt, strategy: str, ratio: float
) -> tuple[torch.Tensor, int]:
    """The language model on hand-spliced embeddings: each frame's attention map (feature layer, head mean, FoPru's
    column or row mean in float64) and its projected features pooled 2 x 2 by a bilinear matrix written here, the
    selection in numpy per frame, the kept tokens in frame order, then the video's newline. Also the kept count."""
    inputs = hf_inputs(processor, [prompt])
    ids = inputs["input_ids"][0]
    config = model.config
    side = config.vision_config.image_size // config.vision_config.patch_size
    pooled = (side + 1) // 2
    weights = bilinear_matrix(side, pooled)
    frames = inputs["pixel_values_videos"][0]
    tower = model.model.vision_tower(frames, output_attentions=True, output_hidden_states=True)
    attention = tower.attentions[len(tower.attentions) + config.vision_feature_layer].double().mean(dim=1).numpy()
    features = model.model.multi_modal_projector(tower.hidden_states[config.vision_feature_layer]).double().numpy()
    pieces, kept_count = [], 0
    for frame_attention, frame_features in zip(attention, features, strict=True):
        column, row = frame_attention.mean(axis=0), frame_attention.mean(axis=1)
        significance = (column if column.var() > row.var() else row).reshape(side, side)
        pooled_significance = weights @ significance @ weights.T
        pooled_features = np.einsum("ri,ijc,sj->rsc", weights, frame_features.reshape(side, side, -1), weights)
        kept = numpy_selection(pooled_significance, strategy, ratio, None)
        pieces.append(torch.from_numpy(pooled_features.reshape(pooled * pooled, -1)[kept]).float())
        kept_count += len(kept)
    pieces.append(model.model.image_newline.detach()[None])
    video = ids == config.video_token_id
    assert int(video.sum()) == len(frames) * pooled * pooled + 1
    embed = model.get_input_embeddings()
    start = int(video.nonzero()[0])
    embeds = torch.cat([embed(ids[:start]), *pieces, embed(ids[start + int(video.sum()) :])])
    hidden = model.model.language_model(inputs_embeds=embeds[None])
    return model.lm_head(hidden.last_hidden_state), kept_count


@pytest.mark.parametrize(("strategy", "ratio"), [("rank", 0.5), ("rank", 0.3), ("row", 0.5)])
def test_onevision_pruned_video_equals_a_reference_over_only_the_kept_tokens(
    tiny_onevision: Path, strategy: str, ratio: float
) -> None:
    ours = onevision(tiny_onevision, strategy=strategy, keep_ratio=ratio)
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(tiny_onevision, attn_implementation="eager").eval()
    processor = AutoProcessor.from_pretrained(tiny_onevision)
    with torch.inference_mode():
        prepared = ours.prepare([video_prompt()])
        logits = ours.model(**prepared.inputs).logits
        expected, kept = onevision_reference_logits(model, processor, video_prompt(), strategy, ratio)
    assert prepared.visual_tokens_kept == [kept]
    assert logits.shape == expected.shape
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def qwen3_vl_reference(model, processor, prompt: Prompt, strategy: str, ratio: float) -> dict:
    """What the LLM should see for one video: each temporal patch scored as a one-frame image of its own (the tower
    attends within it), selected in numpy, the main and DeepStack features of the kept tokens spliced by hand, and
    every kept token at its unpruned position, each temporal patch numbered like an image after its timestamp."""
    inputs = hf_inputs(processor, [prompt], do_sample_frames=False)
    ids, (grid,) = inputs["input_ids"][0], inputs["video_grid_thw"].tolist()
    patches = [[1, grid[1], grid[2]]] * grid[0]
    pixels = inputs["pixel_values_videos"]
    maps = reference_significance(model, pixels, torch.tensor(patches))
    per_patch = maps[0].size
    kept = np.concatenate(
        [patch * per_patch + numpy_selection(m, strategy, ratio, None) for patch, m in enumerate(maps)]
    )
    output = model.model.get_video_features(pixels, inputs["video_grid_thw"])
    video_token_id = model.config.video_token_id
    placeholders = (ids == video_token_id).nonzero().flatten()
    embeds = model.get_input_embeddings()(ids)
    embeds[placeholders] = output.pooler_output[0]
    keep = ids != video_token_id
    keep[placeholders[torch.from_numpy(kept)]] = True
    positions = positions_by_hand(ids.tolist(), patches, video_token_id)
    return {
        "embeds": embeds[keep],
        "positions": positions[:, keep],
        "visual": ids[keep] == video_token_id,
        "deepstack": [layer[0][torch.from_numpy(kept)] for layer in output.deepstack_features],
        "kept": len(kept),
    }


@pytest.mark.parametrize(("strategy", "ratio"), [("rank", 0.5), ("rank", 0.25), ("row", 0.5)])
def test_qwen3_vl_pruned_video_equals_a_reference_over_only_the_kept_tokens(
    tiny_qwen3_vl: Path, strategy: str, ratio: float
) -> None:
    ours = qwen3_vl(tiny_qwen3_vl, strategy=strategy, keep_ratio=ratio)
    model, processor = qwen3_vl_hf(tiny_qwen3_vl, attn_implementation="eager")
    prompt = ours._with_system_turn(video_prompt())
    with torch.inference_mode():
        prepared = ours.prepare([prompt])
        logits = ours.model(**prepared.inputs).logits
        reference = qwen3_vl_reference(model, processor, prompt, strategy, ratio)
        expected = reference_logits(model, reference)
    assert prepared.visual_tokens_kept == [reference["kept"]]
    assert torch.equal(prepared.inputs["position_ids"][1:, 0], reference["positions"])
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


# ----- a batch mixing videos and images answers as one by one -----------------------------------------------------


@pytest.mark.parametrize("family", ["onevision", "qwen3_vl"])
@pytest.mark.parametrize("strategy", ["rank", "row", "random"])
def test_a_batch_mixing_videos_and_images_answers_as_one_by_one(
    tiny_onevision: Path, tiny_qwen3_vl: Path, family: str, strategy: str
) -> None:
    if family == "onevision":
        ours = onevision(tiny_onevision, strategy=strategy, keep_ratio=0.5, batch_size=4)
    else:
        ours = qwen3_vl(tiny_qwen3_vl, strategy=strategy, keep_ratio=0.5, batch_size=4)
    gen = {"max_new_tokens": 6, "temperature": 0}
    one_by_one = [ours._generate([p], gen)[0] for p in mixed_prompts()]
    batched = ours._generate(mixed_prompts(), gen)
    assert [a.text for a in batched] == [a.text for a in one_by_one]
    assert [a.token_counts.to_dict() for a in batched] == [a.token_counts.to_dict() for a in one_by_one]
    assert len({a.text for a in batched}) > 1  # the random model's answers depend on the input


# ----- the adapters: lmms-eval hands videos over as file paths ----------------------------------------------------

# One solid color per frame, far apart, so a decoded frame tells which source frame it is despite compression.
FRAME_COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255), (255, 255, 255)]


def write_video(path: Path, frames: np.ndarray | None = None, rate: int = 10) -> str:
    """An MPEG-4 clip of ``frames`` ((frames, height, width, 3) uint8; by default 7 solid 64 x 64 frames, one per
    color of FRAME_COLORS) at ``rate`` fps."""
    av = pytest.importorskip("av")
    if frames is None:
        frames = np.stack([np.full((64, 64, 3), color, dtype=np.uint8) for color in FRAME_COLORS])
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for pixels in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return str(path)


@pytest.mark.parametrize("chat", [False, True])
def test_onevision_reads_a_video_path_as_llava_hf_does(tiny_onevision: Path, tmp_path: Path, chat: bool) -> None:
    """max_frames_num frames spaced as lmms-eval's llava_hf spaces them: of 7 frames, 4 are 0, 2, 4 and 6."""
    path = write_video(tmp_path / "clip.mp4")
    ours = onevision(tiny_onevision, strategy="rank", keep_ratio=0.5, max_frames_num=4)
    ours.task_dict = {"t": {"test": [{"video": path}]}}
    if chat:
        messages = [{"role": "user", "content": [{"type": "video", "url": path}, {"type": "text", "text": "Colors?"}]}]
        prompt = ours._prompt_from_messages(messages, 0, "t", "test")
    else:
        prompt = ours._prompt_from_visuals("Colors?", lambda doc: [doc["video"]], 0, "t", "test")
    (frames,) = prompt.videos
    assert frames.shape == (4, 64, 64, 3) and prompt.images == []
    means = frames.reshape(4, -1, 3).mean(axis=1)
    expected = np.array([FRAME_COLORS[i] for i in (0, 2, 4, 6)])
    assert np.abs(means - expected).max() < 8
    (answer,) = ours._generate([prompt], {"max_new_tokens": 2, "temperature": 0})
    assert answer.token_counts.visual_tokens_total == 4 * 9 and answer.token_counts.visual_tokens_kept == 4 * 4


def test_adapters_that_read_no_videos_refuse_a_video_path_naming_themselves(tiny_llava: Path) -> None:
    ours = LlavaFoPru(pretrained=str(tiny_llava), device="cpu", strategy="rank", keep_ratio=0.5)
    messages = [{"role": "user", "content": [{"type": "video", "url": "clip.mp4"}, {"type": "text", "text": "Hi"}]}]
    with pytest.raises(ValueError, match="llava_fopru: t doc 0 has video or audio input; only images"):
        ours._prompt_from_messages(messages, 0, "t", "test")


# ----- Qwen3-VL reads lmms-eval's videomme as lmms-eval's qwen3_vl does ----------------------------------------------

# Both sides take these: the clips lmms_tasks.py writes (6 frames at 5 fps, 64 x 48 to 128 x 96) stay near their size
# (4096 to 16384 pixels a frame), 4 frames each: 2 temporal patches behind their timestamps. With the default 32 frames
# lmms-eval's chat qwen3_vl refuses these clips (see below).
QWEN3_VL_VIDEO_ARGS = "min_pixels=4096,max_pixels=16384,max_num_frames=4"


@pytest.fixture(scope="module")
def task_manager():
    from lmms_eval.tasks import TaskManager

    return TaskManager()


@contextlib.contextmanager
def processed_texts() -> Iterator[list[str]]:
    """The token ids every processor call gives while the block runs, decoded: the prompts with their video
    placeholders expanded, timestamps included."""
    from transformers.processing_utils import ProcessorMixin

    texts: list[str] = []
    call = ProcessorMixin.__call__

    def recording(self: Any, *args: Any, **kwargs: Any) -> Any:
        output = call(self, *args, **kwargs)
        for ids, mask in zip(output["input_ids"], output["attention_mask"], strict=True):
            texts.append(self.tokenizer.decode(ids[mask.bool()]))
        return output

    ProcessorMixin.__call__ = recording
    try:
        yield texts
    finally:
        ProcessorMixin.__call__ = call


def videomme(task_manager, folder: Path, model: str, model_args: str, simple: bool) -> dict:
    """lmms-eval's videomme over 3 generated clips in ``folder``; under "prompts", what the processor made of the
    prompts its model gave it."""
    configs = real_task_configs(("videomme",), folder, task_manager=task_manager)
    with processed_texts() as prompts, contextlib.chdir(folder):
        output = evaluate(model, model_args, configs, task_manager, force_simple=simple)
    return output | {"prompts": prompts}


@pytest.mark.parametrize("simple", [False, True], ids=["chat", "simple"])
def test_qwen3_vl_answers_videomme_as_lmms_eval_qwen3_vl(
    tiny_qwen3_vl: Path, task_manager, tmp_path: Path, simple: bool
) -> None:
    """strategy=none answers every doc as lmms-eval's qwen3_vl, from the same prompts (timestamps included); pruned,
    every temporal patch keeps half its tokens."""
    shared = f"pretrained={tiny_qwen3_vl},{QWEN3_VL_VIDEO_ARGS}"
    ours = videomme(task_manager, tmp_path, "qwen3_vl_fopru", f"{shared},strategy=none", simple)
    theirs = videomme(task_manager, tmp_path, "qwen3_vl", f"{shared},device_map=cpu", simple)
    mine, their = ours["samples"]["videomme"], theirs["samples"]["videomme"]
    assert [s["doc_id"] for s in mine] == [s["doc_id"] for s in their] == [0, 1, 2]
    assert [s["filtered_resps"] for s in mine] == [s["filtered_resps"] for s in their]
    assert [s["resps"] for s in mine] == [s["resps"] for s in their]
    assert sorted(ours["prompts"]) == sorted(theirs["prompts"]) and len(ours["prompts"]) == 3
    # The file's fps (5) and the sampled frames (0, 2, 3, 5) give the timestamps, not the processor's 24 fps default.
    assert all("<0.2 seconds>" in prompt and "<0.8 seconds>" in prompt for prompt in ours["prompts"])
    assert ours["results"]["videomme"] == theirs["results"]["videomme"]

    pruned = videomme(task_manager, tmp_path, "qwen3_vl_fopru", f"{shared},strategy=rank,keep_ratio=0.5", simple)
    for whole, cut in zip(mine, pruned["samples"]["videomme"], strict=True):
        ((full,), (counts,)) = whole["token_counts"], cut["token_counts"]
        assert full["visual_tokens_kept"] == full["visual_tokens_total"] == counts["visual_tokens_total"] > 0
        # Each of the 2 temporal patches keeps floor(n / 2) of its n tokens.
        assert counts["visual_tokens_kept"] == 2 * (full["visual_tokens_total"] // 4)
        dropped = full["visual_tokens_total"] - counts["visual_tokens_kept"]
        assert counts["input_tokens"] == full["input_tokens"] - dropped
        assert all(text.strip() for text in cut["filtered_resps"])


@pytest.mark.xfail(
    strict=True,
    raises=AttributeError,
    reason="lmms-eval's chat qwen3_vl asks qwen-vl-utils for nframes=max_num_frames (32) whatever the clip's length: "
    "its decord reader refuses a 6-frame clip (ValueError), and its fallback, torchvision.io.read_video, is gone from "
    "torchvision (AttributeError). Its simple class caps nframes at the clip's frame count",
)
def test_lmms_eval_chat_qwen3_vl_reads_clips_shorter_than_max_num_frames(
    tiny_qwen3_vl: Path, task_manager, tmp_path: Path
) -> None:
    videomme(task_manager, tmp_path, "qwen3_vl", f"pretrained={tiny_qwen3_vl},device_map=cpu", simple=False)


def test_qwen3_vl_reads_clips_shorter_than_max_num_frames(tiny_qwen3_vl: Path, tmp_path: Path) -> None:
    """Where lmms-eval's chat class fails (above), ours caps the frame count as its simple class does, in both; and
    to an even count where qwen-vl-utils would round the cap up past the clip (7 frames to 8), which fails in both of
    lmms-eval's classes (below)."""
    path = write_video(tmp_path / "clip.mp4")  # 7 frames at 10 fps
    ours = qwen3_vl(tiny_qwen3_vl, strategy="none")  # max_num_frames=32
    messages = [{"role": "user", "content": [{"type": "video", "url": path}, {"type": "text", "text": "Colors?"}]}]
    prompt = ours._prompt_from_messages(messages, 0, "t", "test")
    ((frames,), (metadata,)) = prompt.videos, prompt.video_metadata
    assert frames.shape[:2] == (6, 3) and metadata["frames_indices"] == [0, 1, 2, 4, 5, 6]
    assert metadata["fps"] == 10 and metadata["total_num_frames"] == 7
    (answer,) = ours._generate([prompt], {"max_new_tokens": 2, "temperature": 0})
    assert answer.token_counts.visual_tokens_total > 0


def test_video_metadata_goes_to_the_processor_only_where_a_video_has_some() -> None:
    """A video given as frames alone, beside one with metadata, gets the processor's own defaults."""
    read = Prompt(turn("What moves?", 1, []), [], "t/test/1", videos=[OTHER_VIDEO], video_metadata=[{"fps": 5.0}])
    assert video_metadata([video_prompt()]) is None
    assert video_metadata([video_prompt(), read]) == [
        {"total_num_frames": 4, "fps": None, "frames_indices": [0, 1, 2, 3]},
        {"fps": 5.0},
    ]


def test_a_batch_of_video_files_answers_as_one_by_one(tiny_qwen3_vl: Path, tmp_path: Path) -> None:
    """Two clips of different lengths, rates and sizes: each keeps its own metadata (timestamps) in a batch."""
    ours = qwen3_vl(tiny_qwen3_vl, strategy="rank", keep_ratio=0.5, max_num_frames=4, batch_size=2)
    clips = [
        write_video(tmp_path / "colors.mp4"),
        write_video(tmp_path / "square.mp4", moving_square(6, 96, 128, (255, 0, 0)), 5),
    ]
    ours.task_dict = {"t": {"test": [{"video": clip} for clip in clips]}}
    prompts = [ours._prompt_from_visuals("What moves?", lambda doc: [doc["video"]], i, "t", "test") for i in (0, 1)]
    assert [p.video_metadata[0]["frames_indices"] for p in prompts] == [[0, 2, 4, 6], [0, 2, 3, 5]]
    gen = {"max_new_tokens": 4, "temperature": 0}
    one_by_one = [ours._generate([p], gen)[0] for p in prompts]
    batched = ours._generate(prompts, gen)
    assert [a.text for a in batched] == [a.text for a in one_by_one]
    assert [a.token_counts.to_dict() for a in batched] == [a.token_counts.to_dict() for a in one_by_one]


def test_lmms_eval_simple_qwen3_vl_cap_of_7_frames_is_refused_by_qwen_vl_utils(tmp_path: Path) -> None:
    """What lmms-eval's simple qwen3_vl hands qwen-vl-utils for a 7-frame clip (nframes = min(32, 7))."""
    from qwen_vl_utils import process_vision_info

    item = {"type": "video", "video": write_video(tmp_path / "clip.mp4"), "nframes": 7, "min_pixels": 4096}
    # decord's reader refuses it, then the torchvision fallback fails: torchvision.io.read_video is gone.
    with pytest.raises(AttributeError, match="read_video") as failure:
        process_vision_info([[{"role": "user", "content": [item]}]], image_patch_size=16, return_video_metadata=True)
    assert "nframes should in interval [2, 7], but got 8" in str(failure.value.__context__)


@pytest.mark.parametrize(
    "args",
    [{}, {"fps": "1.5"}, {"total_pixels": "50000"}, {"fps": 2, "total_pixels": 50000, "max_num_frames": 8}],
    ids=["nframes", "fps", "total_pixels", "both"],
)
def test_qwen3_vl_video_kwargs_are_lmms_eval_qwen3_vls(args: dict) -> None:
    from lmms_eval.models.simple.qwen3_vl import Qwen3_VL

    ours = Qwen3VLFoPru.__new__(Qwen3VLFoPru)
    ours.min_pixels, ours.max_pixels = 4096, 16384
    ours.max_num_frames = int(args.get("max_num_frames", 32))
    ours.fps = float(args["fps"]) if "fps" in args else None
    ours.total_pixels = int(args["total_pixels"]) if "total_pixels" in args else None
    theirs = SimpleNamespace(min_pixels=4096, max_pixels=16384, max_num_frames=ours.max_num_frames)
    theirs.fps, theirs.total_pixels = ours.fps, ours.total_pixels
    assert ours.video_kwargs() == Qwen3_VL._build_video_kwargs(theirs)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"max_num_frames": "1"}, r"max_num_frames='1' is not supported; accepted values: integers >= 2"),
        ({"max_num_frames": "all"}, r"max_num_frames='all' is not supported; accepted values: integers >= 2"),
        ({"fps": "0"}, r"fps='0' is not supported; accepted values: numbers > 0"),
        ({"fps": "fast"}, r"fps='fast' is not supported; accepted values: numbers > 0"),
        ({"total_pixels": "-4"}, r"total_pixels='-4' is not supported; accepted values: integers >= 1"),
    ],
)
def test_qwen3_vl_bad_video_args_fail_before_weights_load(tiny_qwen3_vl: Path, args: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Qwen3VLFoPru(pretrained=str(tiny_qwen3_vl / "does-not-exist"), **args)

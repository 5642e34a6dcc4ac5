"""Benchmark FoPru on a random model of any adapted family: prefill, end-to-end, memory, significance cost, parity.

``--model`` picks the family (``FAMILIES``): LLaVA-1.5, LLaVA-NeXT, Qwen2-VL or Qwen2.5-VL, each as a random checkpoint
of the real architecture. The sweep, memory, prefill and end-to-end figures go through the adapter's own ``prepare``
and ``generate_until`` only, so they are the same code for every family. Each pruned config is also held to the
"ideal": the same model fed only as many image tokens as the config kept, with no pruning machinery. The cost of
significance is measured on the benchmark model's tower and on the family's tower at its published size. Parity is
against lmms-eval's own adapter for the family (llava_hf, qwen2_vl, qwen2_5_vl).

Everything is measured in one process on one loaded checkpoint and reported beside its ratio to strategy=none
from the same run: a random model's absolute times say little, the ratios say what pruning buys. Configs are
switched by replacing ``adapter.pruning`` and measured in interleaved rounds, so drift of the machine (heat,
other load) hits every config alike; each time is the median over the timed rounds.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import torch
from lmms_eval.api.instance import Instance
from PIL import Image, ImageDraw
from transformers import CLIPVisionModel
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

from fopru_eval.capture import SignificanceCapture
from fopru_eval.config import PruningConfig
from fopru_eval.full_size import full_size_config, save_random_full_size
from fopru_eval.packed_capture import PackedSignificanceCapture
from fopru_eval.random_llava import MID, TINY, save_random_llava
from fopru_eval.random_llava_next import save_random_llava_next
from fopru_eval.random_qwen_vl import TINY as QWEN_TINY
from fopru_eval.random_qwen_vl import QwenVLSize, save_random_qwen_vl

TASK, SPLIT = "fopru_bench", "test"
COLORS = ["red", "green", "blue", "orange", "purple", "black"]
QUESTIONS = ["What color is the shape?", "Which shape is in the center?", "Is there a red circle?"]

# A Qwen-VL on the scale of random_llava.MID: an 8 x 512 LLM and an 8 x 256 tower (head widths 64 and 32, M-RoPE split
# as in the real 7B models), Qwen2.5-VL's full attention in blocks 3 and 7 and its real 112-pixel windows. Under
# QWEN_PIXELS["mid"] (Qwen2.5-VL's own defaults) a 336 x 336 image becomes 448 x 448: 32 x 32 patches in the tower,
# 16 x 16 = 256 visual tokens after the 2 x 2 merge.
QWEN_MID = QwenVLSize(
    vision_hidden=256, vision_layers=8, vision_heads=8, fullatt_block_indexes=(3, 7), window_size=112,
    text_hidden=512, text_layers=8, text_heads=8, text_kv_heads=4, mrope_section=(8, 12, 12), vocab_size=2000,
    initializer_range=0.02,
)  # fmt: skip
# Pixel limits, passed alike to our adapter and lmms-eval's: tiny keeps 336 x 336 images at 112 x 112 (8 x 8 patches,
# 16 visual tokens), mid and full upscale them to 448 x 448 (256 visual tokens).
QWEN_PIXELS = {
    "tiny": {"min_pixels": 3136, "max_pixels": 12544},
    "mid": {"min_pixels": 256 * 28 * 28, "max_pixels": 1605632},
    "full": {"min_pixels": 256 * 28 * 28, "max_pixels": 1605632},
}


# The Qwen vision towers, for the cost on their published size.
QWEN_TOWERS = {
    "qwen2_vl": Qwen2VisionTransformerPretrainedModel,
    "qwen2_5_vl": Qwen2_5_VisionTransformerPretrainedModel,
}


def _save_qwen_vl(family: str, path: str, size: QwenVLSize) -> Path:
    return save_random_qwen_vl(path, family, size)


# What each family's get_image_features takes besides the pixels, as its image processor returns it.
TOWER_INPUTS = ("pixel_values", "image_sizes", "image_grid_thw")


def image_tokens_kept(counts: Any) -> int:
    """Image tokens the LLM saw for one sample: its kept visual tokens, plus LLaVA-NeXT's kept newlines."""
    return counts.visual_tokens_kept + (getattr(counts, "newline_tokens_kept", None) or 0)


def _first_features_inputs(adapter: Any, prompts: list[Any], counts: list[int], images: list[Any]) -> dict[str, Any]:
    """The processor's own tokenization of each prompt with its (one) image placeholder repeated ``count`` times, and
    the first ``count`` features the model's own tower gives for the image."""
    processor, model = adapter.processor, adapter.model
    token = processor.image_token
    texts = [
        processor.apply_chat_template(p.messages, add_generation_prompt=True, tokenize=False).replace(
            token, token * count
        )
        for p, count in zip(prompts, counts, strict=True)
    ]
    inputs = dict(processor.tokenizer(texts, padding=True, padding_side="left", return_tensors="pt"))
    encoded = processor.image_processor(images, return_tensors="pt")
    tower_inputs = {name: encoded[name].to(adapter.device) for name in TOWER_INPUTS if name in encoded}
    tower_inputs["pixel_values"] = tower_inputs["pixel_values"].to(model.dtype)
    features = model.get_image_features(**tower_inputs).pooler_output
    kept = [image_features[:count] for image_features, count in zip(features, counts, strict=True)]
    inputs = {name: tensor.to(adapter.device) for name, tensor in inputs.items()}
    inputs["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=kept)}
    return inputs


def llava_ideal_inputs(adapter: Any, prompts: list[Any], counts: list[int]) -> dict[str, Any]:
    """The ideal for the LLaVA families (for LLaVA-NeXT, the first features of the packed ones, newlines included)."""
    return _first_features_inputs(adapter, prompts, counts, [image for p in prompts for image in p.images])


def qwen_ideal_inputs(adapter: Any, prompts: list[Any], counts: list[int]) -> dict[str, Any]:
    """The ideal for the Qwen families, with a 1 x count merged grid in ``image_grid_thw`` so that the model computes
    the M-RoPE positions itself, as for any image."""
    images = [adapter._presize(image) for p in prompts for image in p.images]  # as the adapter (and lmms-eval) do
    inputs = _first_features_inputs(adapter, prompts, counts, images)
    inputs["mm_token_type_ids"] = (inputs["input_ids"] == adapter.model.config.image_token_id).long()
    merge = adapter.merge_size
    inputs["image_grid_thw"] = torch.tensor([[1, merge, merge * count] for count in counts], device=adapter.device)
    return inputs


# (adapter, prompts of one batch, image tokens per prompt) -> the model inputs of the "ideal" run (see sweep).
IdealInputs = Callable[[Any, list[Any], list[int]], dict[str, Any]]


@dataclass(frozen=True)
class Family:
    """What the benchmark needs to know of one adapted family; everything else goes through the adapter."""

    label: str
    chat_class: str  # "module:Class" in fopru_model_adapters
    save: Callable[[str, Any], Path]  # (directory, size) -> a random checkpoint there
    sizes: dict[str, Any]
    reference: str  # lmms-eval's own adapter for the family, for the parity run
    adapter_args: dict[str, dict[str, Any]] = field(default_factory=dict)  # per size name
    ideal: IdealInputs | None = None
    full_size: str = ""  # the family's name in full_size.FAMILIES, for the cost on its published vision tower
    full_size_tower: str = ""  # that tower, in words

    def load_chat_class(self) -> type:
        import importlib

        module, name = self.chat_class.split(":")
        return getattr(importlib.import_module(f"fopru_model_adapters.{module}"), name)


FAMILIES = {
    "llava_fopru": Family(
        "LLaVA-1.5", "llava:LlavaFoPruChat", save_random_llava, {"tiny": TINY, "mid": MID}, "llava_hf",
        ideal=llava_ideal_inputs, full_size="llava", full_size_tower="CLIP ViT-L/14-336, 24 x 1024",
    ),
    # Crops as large as LLaVA-1.5's views: at mid, a 336 x 336 image is a base view and 1 x 2 crops of 24 x 24.
    "llava_next_fopru": Family(
        "LLaVA-NeXT", "llava_next:LlavaNextFoPruChat", save_random_llava_next, {"tiny": TINY, "mid": MID},
        "llava_hf", ideal=llava_ideal_inputs, full_size="llava_next", full_size_tower="CLIP ViT-L/14-336, 24 x 1024",
    ),
    "qwen2_vl_fopru": Family(
        "Qwen2-VL", "qwen_vl:Qwen2VLFoPruChat", partial(_save_qwen_vl, "qwen2_vl"),
        {"tiny": QWEN_TINY, "mid": QWEN_MID}, "qwen2_vl", adapter_args=QWEN_PIXELS, ideal=qwen_ideal_inputs,
        full_size="qwen2_vl", full_size_tower="Qwen2-VL-7B's, 32 x 1280",
    ),
    "qwen2_5_vl_fopru": Family(
        "Qwen2.5-VL", "qwen_vl:Qwen2_5_VLFoPruChat", partial(_save_qwen_vl, "qwen2_5_vl"),
        {"tiny": QWEN_TINY, "mid": QWEN_MID}, "qwen2_5_vl", adapter_args=QWEN_PIXELS, ideal=qwen_ideal_inputs,
        full_size="qwen2_5_vl", full_size_tower="Qwen2.5-VL-7B's, 32 x 1280, full attention in 4 blocks",
    ),
}  # fmt: skip
# "full": the published 7B architecture of the family (full_size.py), random bf16 weights, on a GPU only.
SIZES = ("tiny", "mid", "full")


def save_checkpoint(family: Family, size: str, directory: str, device: str) -> Path:
    """A random checkpoint of ``family`` at ``size`` saved in ``directory``; the full size is built on ``device``."""
    if size == "full":
        return save_random_full_size(directory, family.full_size, device=device)
    return family.save(directory, family.sizes[size])


def architecture(config: Any) -> dict[str, int]:
    """Depth and width of the loaded model's vision tower and LLM, whatever the family calls them."""
    vision, text = config.vision_config, config.text_config
    return {
        "vision_layers": getattr(vision, "num_hidden_layers", None) or vision.depth,
        # Qwen2-VL's vision hidden_size is its merger's output; its blocks are embed_dim wide.
        "vision_hidden": getattr(vision, "embed_dim", None) or vision.hidden_size,
        "vision_heads": getattr(vision, "num_attention_heads", None) or vision.num_heads,
        "text_layers": text.num_hidden_layers,
        "text_hidden": text.hidden_size,
        "text_heads": text.num_attention_heads,
        "vocab_size": text.vocab_size,
    }


try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc: RSS is read as the allocator leaves it
    _LIBC = None


def synthetic_docs(count: int, size: int = 336) -> list[dict[str, Any]]:
    """One coloured shape on white per image, placed and coloured by the doc index: the same every run."""
    docs = []
    for i in range(count):
        image = Image.new("RGB", (size, size), "white")
        draw = ImageDraw.Draw(image)
        left, top = (i * 67) % (size // 2), (i * 41) % (size // 2)
        right, bottom = left + size // 2, top + size // 2
        color = COLORS[i % len(COLORS)]
        if i % 3 == 0:
            draw.ellipse((left, top, right, bottom), fill=color)
        elif i % 3 == 1:
            draw.rectangle((left, top, right, bottom), fill=color)
        else:
            draw.polygon([(left, bottom), (right, bottom), ((left + right) // 2, top)], fill=color)
        docs.append({"image": image, "question": QUESTIONS[i % len(QUESTIONS)]})
    return docs


def doc_to_messages(doc: dict[str, Any]) -> list[dict[str, Any]]:
    content = [{"type": "image", "url": doc["image"]}, {"type": "text", "text": doc["question"]}]
    return [{"role": "user", "content": content}]


def chat_requests(docs: list[dict[str, Any]], max_new_tokens: int) -> list[Instance]:
    """Chat-model requests as lmms-eval builds them; new ones each call, since llava_hf edits gen_kwargs."""
    requests = []
    for i, doc in enumerate(docs):
        gen_kwargs = {"max_new_tokens": max_new_tokens, "temperature": 0}
        args = (doc["question"], doc_to_messages, gen_kwargs, i, TASK, SPLIT)
        metadata = {"task": TASK, "doc_id": i, "repeats": 1}
        requests.append(Instance("generate_until", args, idx=0, metadata=metadata))
    return requests


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Wall-clock seconds of ``fn()`` and its result; on CUDA, queued kernels are waited for at both ends."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


class PeakMemory:
    """Peak memory a block adds: CUDA's allocator peak, or on CPU the peak RSS above the RSS before the block.

    ``ru_maxrss`` only ever grows over the life of the process, so on CPU a thread samples RSS every ~1 ms.
    Use it inside ``rss_follows_tensors`` so that freed tensors leave the RSS.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.bytes = 0

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        if _LIBC is not None:
            _LIBC.malloc_trim(0)
        self.process = psutil.Process()
        self.base = self.peak = self.process.memory_info().rss
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop.wait(0.001):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc_info: object) -> None:
        if self.device.type == "cuda":
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self.base
            return
        self.stop.set()
        self.thread.join()
        self.bytes = max(self.peak, self.process.memory_info().rss) - self.base


@contextmanager
def rss_follows_tensors() -> Iterator[None]:
    """While active, glibc gives each large block its own mapping, returned to the OS when freed.

    By default glibc's mmap threshold grows with every large free (up to 32 MiB), so after a warm-up tensors
    reuse heap the process already holds and RSS barely moves. A fixed 128 KiB threshold makes RSS follow the
    live tensors, but it slows CPU inference by a third, so on exit the threshold goes to the 32 MiB a warm
    process reaches anyway, for timing. Measure memory first: a heap fragmented by earlier runs hides it.
    """
    m_trim_threshold, m_mmap_threshold = -1, -3
    if _LIBC is None:
        yield
        return
    _LIBC.mallopt(m_mmap_threshold, 128 * 2**10)
    try:
        yield
    finally:
        _LIBC.mallopt(m_mmap_threshold, 32 * 2**20)
        _LIBC.mallopt(m_trim_threshold, 64 * 2**20)


def time_to_first_token(adapter: Any, prompts: list[Any]) -> tuple[float, float]:
    """Seconds from prompts to the first token's logits (``prepare`` + LLM prefill), and the prefill alone."""
    with torch.inference_mode():
        prepare_s, prepared = timed(lambda: adapter.prepare(prompts), adapter.device)
        # generate's first step: one forward that fills the KV cache and scores only the last position.
        prefill = partial(adapter.model, **prepared.inputs, use_cache=True, logits_to_keep=1)
        llm_s, _ = timed(prefill, adapter.device)
    return prepare_s + llm_s, llm_s


def ideal_times(
    ideal_inputs: IdealInputs, adapter: Any, prompts: list[Any], counts: list[int], max_new_tokens: int
) -> tuple[float, float]:
    """Seconds to the first token and end to end, for one batch of the ideal; it generates every token it may,
    so it never finishes early by chance."""
    make_inputs = partial(ideal_inputs, adapter, prompts, counts)
    with torch.inference_mode():
        prepare_s, inputs = timed(make_inputs, adapter.device)
        llm_s, _ = timed(partial(adapter.model, **inputs, use_cache=True, logits_to_keep=1), adapter.device)
        generation = adapter._generation_config({"max_new_tokens": max_new_tokens})
        generate = partial(adapter.model.generate, **generation, min_new_tokens=max_new_tokens)
        end_to_end_s, _ = timed(lambda: generate(**make_inputs()), adapter.device)
    return prepare_s + llm_s, end_to_end_s


def sweep(
    adapter: Any,
    docs: list[dict],
    configs: list[PruningConfig],
    args: argparse.Namespace,
    ideal: IdealInputs | None = None,
) -> list[dict]:
    """Per config: peak memory, prefill, LLM prefill and end-to-end seconds per sample, token counts; with ``ideal``,
    also the times of the ideal run: the same model fed only as many image tokens as the config kept, per sample,
    with no pruning machinery (no significance hooks, no selection, no re-padding), else those are None."""
    # Memory in passes of its own, before any timing (see rss_follows_tensors), and never while timing, as the
    # sampling thread would compete for the CPU.
    memory = {}
    with rss_follows_tensors():
        for config in [configs[0], configs[-1]]:  # untimed: settle what a first run initialises
            adapter.pruning = config
            adapter.generate_until(chat_requests(docs, args.max_new_tokens))
        for config in configs:
            adapter.pruning = config
            with PeakMemory(adapter.device) as peak:
                adapter.generate_until(chat_requests(docs, args.max_new_tokens))
            memory[config] = peak.bytes / 2**20

    # The adapter's own request -> prompt path, so the prefill sees exactly what generate_until sees.
    prompts = [adapter.generation_prompt(r)[0] for r in chat_requests(docs, args.max_new_tokens)]
    batches = [prompts[i : i + args.batch_size] for i in range(0, len(prompts), args.batch_size)]
    measures = ("prefill_s", "llm_prefill_s", "end_to_end_s", "ideal_prefill_s", "ideal_end_to_end_s")
    times = {config: {name: [] for name in measures} for config in configs}
    answers = {}
    for round_index in range(args.warmup + args.repeats):
        for config in configs:
            adapter.pruning = config
            first_token = [time_to_first_token(adapter, batch) for batch in batches]
            requests = chat_requests(docs, args.max_new_tokens)
            end_to_end, answers[config] = timed(lambda r=requests: adapter.generate_until(r), adapter.device)
            if round_index >= args.warmup:
                times[config]["prefill_s"].append(sum(t for t, _ in first_token) / len(docs))
                times[config]["llm_prefill_s"].append(sum(t for _, t in first_token) / len(docs))
                times[config]["end_to_end_s"].append(end_to_end / len(docs))
            if ideal is not None:
                kept = [image_tokens_kept(answer.token_counts) for answer in answers[config]]
                counts = [kept[i : i + args.batch_size] for i in range(0, len(kept), args.batch_size)]
                ideal_runs = [
                    ideal_times(ideal, adapter, batch, count, args.max_new_tokens)
                    for batch, count in zip(batches, counts, strict=True)
                ]
                if round_index >= args.warmup:
                    times[config]["ideal_prefill_s"].append(sum(t for t, _ in ideal_runs) / len(docs))
                    times[config]["ideal_end_to_end_s"].append(sum(t for _, t in ideal_runs) / len(docs))

    rows = []
    for config in configs:
        counts = [answer.token_counts for answer in answers[config]]
        rows.append(
            {
                "config": label(config),
                "strategy": config.strategy,
                "keep_ratio": config.keep_ratio or 1.0,
                "visual_tokens_kept": statistics.mean(c.visual_tokens_kept for c in counts),
                "visual_tokens_total": statistics.mean(c.visual_tokens_total for c in counts),
                "output_tokens": statistics.mean(c.output_tokens for c in counts),
                **{name: statistics.median(seconds) if seconds else None for name, seconds in times[config].items()},
                "peak_memory_mib": memory[config],
            }
        )
    for row in rows:
        for key in ("prefill_s", "llm_prefill_s", "end_to_end_s", "peak_memory_mib"):
            baseline = rows[0][key]
            row[key.rsplit("_", 1)[0] + "_vs_none"] = row[key] / baseline if baseline > 0 else float("nan")
        row["prefill_vs_ideal"] = row["prefill_s"] / row["ideal_prefill_s"] if ideal else None
        row["end_to_end_vs_ideal"] = row["end_to_end_s"] / row["ideal_end_to_end_s"] if ideal else None
        # Decoding cost per generated token, once the prompt is in the cache.
        row["decode_per_token_s"] = (row["end_to_end_s"] - row["prefill_s"]) / max(row["output_tokens"], 1)
    return rows


def timed_reductions(capture: Any, device: torch.device) -> list[float]:
    """Make ``capture`` (a SignificanceCapture or PackedSignificanceCapture, before it is entered) time its reduction
    hook, ``_reduce``: all the work a capture adds to the tower's forward. Returns the list the seconds go to. On
    CUDA the timing waits for the GPU at both ends, so such a pass is never one of the timed tower passes."""
    seconds: list[float] = []
    reduce = capture._reduce

    def timed_reduce(*args: Any) -> None:
        elapsed, _ = timed(partial(reduce, *args), device)
        seconds.append(elapsed)

    capture._reduce = timed_reduce
    return seconds


def capture_overhead(
    forward: Callable[[], Any], capture: Callable[[], Any], images: int, device: torch.device, args: argparse.Namespace
) -> dict[str, float]:
    """A vision tower's forward without the significance hooks, with them, and the seconds spent inside them; medians
    over interleaved rounds.

    ``share`` (time inside the hooks / the tower's time) is the figure to read: the difference of the two forwards
    says the same, but a 1% effect drowns in the few percent two long passes differ by on a shared machine. The order
    of the two forwards flips every round, since whichever runs second tends to find warmer caches and allocator.
    """
    seconds: dict[str, list[float]] = {"without": [], "with": [], "inside": []}
    for round_index in range(args.warmup + args.repeats):
        for name in ("with", "without") if round_index % 2 else ("without", "with"):
            with capture() if name == "with" else nullcontext(), torch.inference_mode():
                elapsed, _ = timed(forward, device)
            if round_index >= args.warmup:
                seconds[name].append(elapsed)
        timed_capture = capture()
        inside = timed_reductions(timed_capture, device)
        with timed_capture, torch.inference_mode():
            forward()
        if round_index >= args.warmup:
            seconds["inside"].append(sum(inside))
    without_s, with_s, inside_s = (statistics.median(seconds[name]) for name in ("without", "with", "inside"))
    return {
        "images": images,
        "tower_s": without_s,
        "significance_s": inside_s,
        "share": inside_s / without_s,
        "tower_with_significance_s": with_s,
        "overhead": (with_s - without_s) / without_s,
    }


def significance_cost(adapter: Any, docs: list[dict], args: argparse.Namespace) -> dict[str, Any]:
    """On the benchmark model's own tower: the same hooks the adapter installs for rank and row (its
    ``_significance_capture``), around the model's own ``get_image_features`` on the benchmark's images."""
    if not hasattr(adapter, "_significance_capture"):
        return {"skipped": f"{type(adapter).__name__} exposes no significance capture (_significance_capture)"}
    images = [doc["image"] for doc in docs]
    encoded = adapter.processor.image_processor(images, return_tensors="pt")
    inputs = {name: encoded[name].to(adapter.device) for name in TOWER_INPUTS if name in encoded}
    inputs["pixel_values"] = inputs["pixel_values"].to(adapter.model.dtype)
    forward = partial(adapter.model.get_image_features, **inputs)
    return capture_overhead(forward, adapter._significance_capture, len(images), adapter.device, args)


def significance_cost_full_tower(family: Family, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """On the family's own vision tower at its published size (``full_size.py``, random weights): the cost at the size
    users run, where the one recomputed map is a small part of a deep, wide tower, unlike in a small benchmark tower.
    LLaVA-1.5 and LLaVA-NeXT share CLIP ViT-L/14-336 (one 336 px view per image); the Qwen towers get 448 x 448
    images (32 x 32 patches), as the mid benchmark model does."""
    vision = full_size_config(family.full_size).vision_config
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    images = 8 if device.type == "cuda" else 2
    generator = torch.Generator().manual_seed(0)
    if family.full_size in ("llava", "llava_next"):
        tower = CLIPVisionModel._from_config(vision, dtype=dtype).to(device).eval()
        # The layer both LLaVAs read: vision_feature_layer=-2 of 24 layers is the output of layer 22.
        attention = tower.encoder.layers[len(tower.encoder.layers) - 2].self_attn
        side = vision.image_size
        pixels = torch.randn(images, 3, side, side, generator=generator).to(device, dtype)
        forward = partial(tower, pixels)

        def capture() -> Any:
            return SignificanceCapture(
                attention.q_proj, attention.k_proj, attention.num_heads, attention.scale, 1, "auto"
            )

    else:
        chat_class = family.load_chat_class()
        tower = QWEN_TOWERS[family.full_size]._from_config(vision, dtype=dtype).to(device).eval()
        attention = tower.blocks[chat_class.significance_block(vision)].attn
        grid = torch.tensor([[1, 32, 32]] * images, device=device)
        patch = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
        pixels = torch.randn(images * 32 * 32, patch, generator=generator).to(device, dtype)
        forward = partial(tower, pixels, grid_thw=grid)

        def capture() -> Any:
            merge_unit = vision.spatial_merge_size**2
            return PackedSignificanceCapture(attention, attention.num_heads, attention.scaling, "auto", merge_unit)

    cost = capture_overhead(forward, capture, images, device, args)
    cost["tower"] = f"{family.full_size_tower}, {sum(p.numel() for p in tower.parameters()) / 1e6:.0f}M parameters"
    return cost


def simple_requests(docs: list[dict[str, Any]], max_new_tokens: int) -> list[Instance]:
    """The same requests as ``chat_requests`` in lmms-eval's simple form (text, then the doc's images first)."""
    requests = []
    for i, doc in enumerate(docs):
        gen_kwargs = {"max_new_tokens": max_new_tokens, "temperature": 0}
        args = (doc["question"], gen_kwargs, lambda d: [d["image"]], i, TASK, SPLIT)
        metadata = {"task": TASK, "doc_id": i, "repeats": 1}
        requests.append(Instance("generate_until", args, idx=0, metadata=metadata))
    return requests


def reference_model(family: Family, adapter: Any, path: Path) -> tuple[Any, Callable[..., list[Instance]], str]:
    """lmms-eval's own adapter for the family on the same checkpoint, device and pixel limits; its request builder;
    and what was changed in it for the comparison ("" if nothing)."""
    device = str(adapter.device)
    if family.reference == "llava_hf":
        from lmms_eval.models.chat.llava_hf import LlavaHf

        # device_map too: llava_hf passes its default "" on to from_pretrained, which transformers 5 rejects.
        return LlavaHf(pretrained=str(path), device=device, device_map=device, batch_size=1), chat_requests, ""
    import importlib.util

    if importlib.util.find_spec("qwen_vl_utils") is None:
        raise ImportError(f"lmms-eval's {family.reference} needs qwen-vl-utils, which is not installed")
    pixels = {"min_pixels": adapter.min_pixels, "max_pixels": adapter.max_pixels}
    if family.reference == "qwen2_vl":
        from lmms_eval.models.model_utils.media_encoder import encode_image_to_data_url
        from lmms_eval.models.simple.qwen2_vl import Qwen2_VL

        # Its only class is the simple one, and it re-encodes every image as JPEG (quality 85), which ours does not:
        # made lossless here, as in tests/test_qwen_vl.py, so that answers can be compared.
        theirs = Qwen2_VL(pretrained=str(path), device=device, device_map=device, batch_size=1, **pixels)
        theirs._encode_image_data_url = partial(encode_image_to_data_url, image_format="PNG", convert_rgb=True)
        return theirs, simple_requests, "its simple class; its JPEG re-encoding made lossless"
    if family.reference == "qwen2_5_vl":
        from lmms_eval.models.chat.qwen2_5_vl import Qwen2_5_VL

        # It loads bfloat16 whatever the checkpoint: cast to the dtype ours runs in, so that answers can be compared.
        theirs = Qwen2_5_VL(pretrained=str(path), device=device, device_map=device, batch_size=1, **pixels)
        theirs.model.to(adapter.model.dtype)
        return theirs, chat_requests, f"its bfloat16 weights cast to {str(adapter.model.dtype).removeprefix('torch.')}"
    raise ValueError(f"no lmms-eval reference adapter known as {family.reference!r}")


def compare_reference(
    family: Family, adapter: Any, path: Path, docs: list[dict], args: argparse.Namespace
) -> dict[str, Any]:
    """strategy=none against lmms-eval's own adapter for the family: same checkpoint, same requests, batch size 1.
    If that adapter cannot be built here (missing package, no offline or CPU support), the comparison is skipped
    with the reason."""
    try:
        theirs, requests_for, changes = reference_model(family, adapter, path)
    except Exception as error:  # noqa: BLE001 - reported, never silently: the rest of the benchmark stands
        return {"reference": family.reference, "skipped": f"{type(error).__name__}: {error}"}
    theirs.task_dict = adapter.task_dict
    adapter.pruning, adapter.batch_size_per_gpu = PruningConfig("none"), 1  # the references run batch size 1
    runs = {"ours": (adapter, chat_requests), "reference": (theirs, requests_for)}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    answers = {}
    for round_index in range(args.warmup + args.repeats):
        for name, (model, make_requests) in runs.items():
            requests = make_requests(docs, args.max_new_tokens)
            elapsed, answers[name] = timed(lambda m=model, r=requests: m.generate_until(r), adapter.device)
            if round_index >= args.warmup:
                seconds[name].append(elapsed / len(docs))
    adapter.batch_size_per_gpu = args.batch_size
    ours_s, theirs_s = statistics.median(seconds["ours"]), statistics.median(seconds["reference"])

    def text(answer: Any) -> str:  # a simple adapter may answer bare strings
        return answer if isinstance(answer, str) else answer.text

    pairs = zip(answers["ours"], answers["reference"], strict=True)
    return {
        "reference": family.reference,
        "changes": changes,
        "ours_end_to_end_s": ours_s,
        "reference_end_to_end_s": theirs_s,
        "ours_vs_reference": ours_s / theirs_s,
        "identical_answers": sum(text(ours) == text(their) for ours, their in pairs),
        "samples": len(docs),
        # llava_hf answers "" with no token counts when generate raises: count those apart.
        "reference_failed": sum(getattr(a, "token_counts", "") is None for a in answers["reference"]),
    }


def label(config: PruningConfig) -> str:
    return config.strategy if config.strategy == "none" else f"{config.strategy}@{config.keep_ratio:g}"


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Save a random checkpoint of the family, load it once through its chat adapter, and take every measurement."""
    started = time.perf_counter()
    # All the cores this process may run on (a container or taskset may allow fewer than the machine has).
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(cores)
    family = FAMILIES[args.model]
    docs = synthetic_docs(args.samples)
    configs = [PruningConfig("none")]
    configs += [PruningConfig(strategy, keep_ratio=r) for strategy in args.strategies for r in args.ratios]
    with tempfile.TemporaryDirectory(prefix="fopru-bench-") as tmp:
        path = save_checkpoint(family, args.size, tmp, args.device)
        chat_class = family.load_chat_class()
        adapter = chat_class(
            pretrained=str(path), device=args.device, batch_size=args.batch_size, strategy="none",
            **family.adapter_args.get(args.size, {}),
        )  # fmt: skip
        adapter.task_dict = {TASK: {SPLIT: docs}}
        device = adapter.device
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
        settings = ("samples", "batch_size", "max_new_tokens", "repeats", "warmup", "ratios", "strategies")
        result: dict[str, Any] = {
            "machine": {
                "device": str(device),
                "device_name": device_name,
                "cpu_cores": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "torch": torch.__version__,
                # Other work on the machine skews every time; the interleaved ratios less so.
                "load_average_1m": psutil.getloadavg()[0],
            },
            "model": {
                "adapter": args.model,
                "family": family.label,
                "size": args.size,
                **architecture(adapter.model.config),
                "dtype": str(adapter.model.dtype).removeprefix("torch."),
                **family.adapter_args.get(args.size, {}),
                "parameters_m": sum(p.numel() for p in adapter.model.parameters()) / 1e6,
            },
            "settings": {key: getattr(args, key) for key in settings},
        }
        # First: memory needs an unfragmented heap.
        result["sweep"] = sweep(adapter, docs, configs, args, ideal=family.ideal)
        # As the adapter counts them (every doc shows one image of the same size).
        result["model"]["visual_tokens_per_image"] = result["sweep"][0]["visual_tokens_total"]
        result["significance"] = significance_cost(adapter, docs, args)
        if args.full_tower:
            result["significance_full_tower"] = significance_cost_full_tower(family, adapter.device, args)
        if args.compare:
            result["reference"] = compare_reference(family, adapter, path, docs, args)
    result["total_s"] = time.perf_counter() - started
    return result


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.1f}"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def format_tables(result: dict[str, Any]) -> str:
    """Markdown: a header of machine facts, the sweep table, the ideal, the significance cost, the parity table."""
    m, model, s, sig = result["machine"], result["model"], result["settings"], result["significance"]
    pixels = f", pixels {model['min_pixels']}..{model['max_pixels']}" if "min_pixels" in model else ""
    lines = [
        f"## FoPru benchmark: {model['adapter']}, {model['size']} random {model['family']}, "
        f"{model['parameters_m']:.1f}M parameters, {model['visual_tokens_per_image']:g} visual tokens per image",
        "",
        f"{m['device']} ({m['device_name']}, {m['cpu_cores']} cores, load average "
        f"{m['load_average_1m']:.1f} at start), torch {m['torch']}, {m['torch_threads']} threads; "
        f"vision tower {model['vision_layers']} x {model['vision_hidden']}, "
        f"LLM {model['text_layers']} x {model['text_hidden']}{pixels}; {s['samples']} samples, "
        f"batch size {s['batch_size']}, max_new_tokens {s['max_new_tokens']}; times per sample, median of "
        f"{s['repeats']} rounds after {s['warmup']} warm-up; x none: ratio to strategy=none in this run.",
        "",
        "| config | visual tokens | prefill ms | x none | LLM prefill ms | x none | decode ms/token "
        "| end-to-end ms | x none | output tokens | peak memory MiB | x none |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["sweep"]:
        lines.append(
            f"| {r['config']} | {r['visual_tokens_kept']:g} / {r['visual_tokens_total']:g} "
            f"| {r['prefill_s'] * 1e3:.1f} | {r['prefill_vs_none']:.2f} "
            f"| {r['llm_prefill_s'] * 1e3:.1f} | {r['llm_prefill_vs_none']:.2f} | {r['decode_per_token_s'] * 1e3:.1f} "
            f"| {r['end_to_end_s'] * 1e3:.1f} | {r['end_to_end_vs_none']:.2f} | {r['output_tokens']:g} "
            f"| {r['peak_memory_mib']:.1f} | {r['peak_memory_vs_none']:.2f} |"
        )
    lines += [
        "",
        "Against the ideal: the same model given only as many image tokens as the config kept, with no pruning "
        "machinery (the first k features, placeholders straight from the processor, positions from the model "
        "itself; it always generates max_new_tokens).",
        "",
        "| config | prefill ms | ideal ms | x ideal | end-to-end ms | ideal ms | x ideal |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["sweep"]:
        lines.append(
            f"| {r['config']} | {_ms(r['prefill_s'])} | {_ms(r['ideal_prefill_s'])} | {_ratio(r['prefill_vs_ideal'])} "
            f"| {_ms(r['end_to_end_s'])} | {_ms(r['ideal_end_to_end_s'])} | {_ratio(r['end_to_end_vs_ideal'])} |"
        )
    lines += [
        "",
        "Significance: the tower's own time, the time spent inside the significance hooks and its share of the "
        "tower's; then the tower with the hooks on, and how much slower that was (a difference of two passes, so "
        "within a few percent of noise).",
        "",
        "| significance cost | images | tower ms | significance ms | share | tower with hooks ms | difference |",
        "|---|---|---|---|---|---|---|",
    ]
    full_tower = result.get("significance_full_tower")
    towers = {"this model's tower": sig, f"published size ({full_tower['tower'] if full_tower else ''})": full_tower}
    for name, cost in towers.items():
        if cost is None:
            lines.append(f"| {name} | n/a | n/a | n/a | n/a (--no-full-tower) | n/a | n/a |")
        elif "skipped" in cost:
            lines.append(f"| {name} | n/a | n/a | n/a | n/a ({cost['skipped']}) | n/a | n/a |")
        else:
            lines.append(
                f"| {name} | {cost['images']} | {cost['tower_s'] * 1e3:.1f} | {cost['significance_s'] * 1e3:.1f} "
                f"| {cost['share']:.1%} | {cost['tower_with_significance_s'] * 1e3:.1f} | {cost['overhead']:+.1%} |"
            )
    if "reference" in result:
        c = result["reference"]
        lines += ["", f"Parity with lmms-eval's own {c['reference']}, batch size 1:", ""]
        if "skipped" in c:
            lines.append(f"Skipped: {c['skipped']}")
        else:
            changes = f" ({c['changes']})" if c["changes"] else ""
            lines += [
                f"| batch size 1 | end-to-end ms | x {c['reference']} | identical answers |",
                "|---|---|---|---|",
                f"| lmms-eval {c['reference']}{changes} | {c['reference_end_to_end_s'] * 1e3:.1f} | 1.00 | |",
                f"| {model['adapter']} strategy=none | {c['ours_end_to_end_s'] * 1e3:.1f} "
                f"| {c['ours_vs_reference']:.2f} | {c['identical_answers']} / {c['samples']} "
                f"({c['reference_failed']} {c['reference']} failures) |",
            ]
    lines += ["", f"Total benchmark time {result['total_s']:.0f} s."]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    def ratios(text: str) -> list[float]:
        values = [float(value) for value in text.split(",") if value.strip()]
        if not all(0 < value <= 1 for value in values):
            raise argparse.ArgumentTypeError(f"{text}: every keep ratio must be in (0, 1]")
        return values

    def strategies(text: str) -> list[str]:
        values = [value.strip() for value in text.split(",") if value.strip()]
        if not set(values) <= {"rank", "row", "random"}:
            raise argparse.ArgumentTypeError(f"{text}: accepted strategies are rank, row, random")
        return values

    def positive(text: str) -> int:
        if int(text) < 1:
            raise argparse.ArgumentTypeError(f"{text} is not an integer >= 1")
        return int(text)

    parser.add_argument(
        "--model", choices=list(FAMILIES), default="llava_fopru",
        help="the adapter, on a random checkpoint of its family (default llava_fopru)",
    )  # fmt: skip
    parser.add_argument(
        "--size", choices=SIZES, default="mid",
        help="default mid: 576 visual tokens per view for the LLaVAs, 256 per image for the Qwens; full: the "
        "published 7B architecture with random bf16 weights (needs --device cuda)",
    )  # fmt: skip
    parser.add_argument("--samples", type=positive, default=4, help="synthetic images (default 4)")
    parser.add_argument("--batch-size", type=positive, default=1, help="default 1")
    parser.add_argument("--max-new-tokens", type=positive, default=16, help="default 16")
    parser.add_argument("--repeats", type=positive, default=3, help="timed rounds (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before them (default 1)")
    parser.add_argument("--ratios", type=ratios, default=[1.0, 0.5, 0.25, 0.11], help="default 1,.5,.25,.11")
    parser.add_argument("--strategies", type=strategies, default=["rank", "row"], help="default rank,row")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--no-compare", dest="compare", action="store_false", help="skip the run of lmms-eval's own adapter"
    )
    parser.add_argument(
        "--no-full-tower", dest="full_tower", action="store_false",
        help="skip the significance cost on the family's vision tower at its published size (minutes on a CPU)",
    )  # fmt: skip
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.size == "full" and torch.device(args.device).type != "cuda":
        # Checked before anything is built: a 7B model in float32 does not fit a CPU machine's memory, and would
        # take hours per sample there.
        print(f"fopru-eval bench: error: --size full needs --device cuda (got --device {args.device})", file=sys.stderr)
        return 2
    result = benchmark(args)
    print(format_tables(result))
    if args.output is not None:
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0

"""The benchmark's runs, on one loaded adapter: the configs side by side against strategy=none and the ideal, and the
cost of significance on the adapter's tower and on the family's tower at its published size."""

from __future__ import annotations

import argparse
import statistics
from functools import partial
from typing import Any

import torch

from fopru_eval.core.config import DEFAULT_SCORES, PruningConfig
from fopru_eval.core.scoring import SCORERS
from fopru_eval.tools.bench.measure import PeakMemory, capture_overhead, rss_follows_tensors, timed
from fopru_eval.tools.bench.models import BenchModel
from fopru_eval.tools.bench.workload import chat_requests
from fopru_eval.tools.checkpoints.full_size import full_size_config


def image_tokens_kept(counts: Any) -> int:
    """Image tokens the LLM saw for one sample: its kept visual tokens, plus LLaVA-NeXT's kept newlines."""
    return counts.visual_tokens_kept + (getattr(counts, "newline_tokens_kept", None) or 0)


def time_to_first_token(adapter: Any, prompts: list[Any]) -> tuple[float, float]:
    """Seconds from prompts to the first token's logits (``prepare`` + LLM prefill), and the prefill alone."""
    with torch.inference_mode():
        prepare_s, prepared = timed(lambda: adapter.prepare(prompts), adapter.device)
        # generate's first step: one forward that fills the KV cache and scores only the last position.
        prefill = partial(adapter.model, **prepared.inputs, use_cache=True, logits_to_keep=1)
        llm_s, _ = timed(prefill, adapter.device)
    return prepare_s + llm_s, llm_s


def ideal_times(adapter: Any, prompts: list[Any], counts: list[int], max_new_tokens: int) -> tuple[float, float]:
    """Seconds to the first token and end to end, for one batch of the ideal (``Family.ideal_inputs``); it generates
    every token it may, so it never finishes early by chance."""
    make_inputs = partial(adapter.family.ideal_inputs, prompts, counts)
    with torch.inference_mode():
        prepare_s, inputs = timed(make_inputs, adapter.device)
        llm_s, _ = timed(partial(adapter.model, **inputs, use_cache=True, logits_to_keep=1), adapter.device)
        generation = adapter.generation_kwargs({"max_new_tokens": max_new_tokens})
        generate = partial(adapter.model.generate, **generation, min_new_tokens=max_new_tokens)
        end_to_end_s, _ = timed(lambda: generate(**make_inputs()), adapter.device)
    return prepare_s + llm_s, end_to_end_s


def label(config: PruningConfig) -> str:
    """``rank@0.25``; ``rank+logits@0.25`` where the reading is not the default one."""
    if not config.selection.uses_budget:
        return config.strategy
    reading = f"+{config.scores}" if config.needs_scores and config.scores != DEFAULT_SCORES else ""
    return f"{config.strategy}{reading}@{config.keep_ratio:g}"


def compare_configs(
    adapter: Any, docs: list[dict], configs: list[PruningConfig], args: argparse.Namespace
) -> list[dict]:
    """Per config: peak memory, prefill, LLM prefill and end-to-end seconds per sample, token counts, and the times of
    the ideal run: the same model fed only as many image tokens as the config kept, per sample, with no pruning
    machinery (no significance hooks, no selection, no re-padding)."""
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
            kept = [image_tokens_kept(answer.token_counts) for answer in answers[config]]
            counts = [kept[i : i + args.batch_size] for i in range(0, len(kept), args.batch_size)]
            ideal_runs = [
                ideal_times(adapter, batch, count, args.max_new_tokens)
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
                "scores": config.scores if config.needs_scores else None,
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
        row["prefill_vs_ideal"] = row["prefill_s"] / row["ideal_prefill_s"]
        row["end_to_end_vs_ideal"] = row["end_to_end_s"] / row["ideal_end_to_end_s"]
        # Decoding cost per generated token, once the prompt is in the cache.
        # A difference of two medians: on a loaded machine it can come out negative, which no time is. None then.
        decode = (row["end_to_end_s"] - row["prefill_s"]) / max(row["output_tokens"], 1)
        row["decode_per_token_s"] = decode if decode > 0 else None
    return rows


def significance_cost(adapter: Any, docs: list[dict], args: argparse.Namespace, scores: str) -> dict[str, Any]:
    """On the benchmark model's own tower: the capture the adapter's family installs for scoring strategies (FoPru's
    ``auto`` significance, read as ``scores``), around the model's own ``get_image_features`` on the benchmark's
    images."""
    family = adapter.family
    images = [family.prepare_image(doc["image"]) for doc in docs]
    encoded = family.processor.image_processor(images, return_tensors="pt")
    names = [name for name in ("image_sizes", "image_grid_thw") if name in encoded]
    forward = partial(family.model.get_image_features, **family.tower_inputs(encoded, *names))
    capture = partial(family.significance_capture, SCORERS.get("auto").reading(scores))
    return capture_overhead(forward, capture, len(images), adapter.device, args)


def significance_cost_full_tower(
    model: BenchModel, device: torch.device, args: argparse.Namespace, scores: str = DEFAULT_SCORES
) -> dict[str, Any]:
    """On the family's own vision tower at its published size (``full_size.py``, random weights): the cost at the size
    users run, where the one recomputed map is a small part of a deep, wide tower, unlike in a small benchmark tower.
    The family builds the tower, its random inputs (LLaVA: one 336 px view per image; Qwen: 448 x 448 images, 32 x 32
    patches, as the mid benchmark model has) and the capture."""
    family = model.family
    config = full_size_config(family.model_type)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    images = 8 if device.type == "cuda" else 2
    tower = family.tower_class._from_config(config.vision_config, dtype=dtype).to(device).eval()
    inputs = family.random_tower_inputs(config, images, torch.Generator().manual_seed(0))
    inputs = {name: x.to(device, dtype) if x.is_floating_point() else x.to(device) for name, x in inputs.items()}
    capture = partial(family.tower_capture, tower, config, SCORERS.get("auto").reading(scores))
    cost = capture_overhead(partial(tower, **inputs), capture, images, device, args)
    cost["tower"] = f"{model.full_size_tower}, {sum(p.numel() for p in tower.parameters()) / 1e6:.0f}M parameters"
    return cost

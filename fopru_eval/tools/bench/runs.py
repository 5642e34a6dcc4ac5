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
from fopru_eval.tools.bench.measure import LayerTimer, PeakMemory, capture_overhead, rss_follows_tensors, timed
from fopru_eval.tools.bench.models import BenchModel
from fopru_eval.tools.bench.workload import requests_for
from fopru_eval.tools.checkpoints.full_size import full_size_config


def image_tokens_kept(counts: Any) -> int:
    """Image tokens the LLM saw for one sample: its kept visual tokens, plus LLaVA-NeXT's kept newlines."""
    return counts.visual_tokens_kept + (getattr(counts, "newline_tokens_kept", None) or 0)


def llm_prefill(adapter: Any, inputs: dict[str, Any]) -> tuple[float, float]:
    """generate's first step on ``inputs``: one forward that fills the KV cache and scores only the last position.
    Its seconds, and the seconds of those spent inside the LLM's decoder layers."""
    with LayerTimer(adapter.family.decoder_layers(), adapter.device) as layers:
        llm_s, _ = timed(partial(adapter.model, **inputs, use_cache=True, logits_to_keep=1), adapter.device)
    return llm_s, layers.seconds


def time_to_first_token(adapter: Any, prompts: list[Any]) -> tuple[float, float, float]:
    """Seconds from prompts to the first token's logits (``prepare`` + LLM prefill), the LLM prefill alone, and the
    part of it inside the decoder layers."""
    with torch.inference_mode():
        prepare_s, prepared = timed(lambda: adapter.prepare(prompts), adapter.device)
        with prepared.running():  # tokens dropped inside the LLM (FastV) are dropped in the timed prefill too
            llm_s, layers_s = llm_prefill(adapter, prepared.inputs)
    return prepare_s + llm_s, llm_s, layers_s


def ideal_times(
    adapter: Any, prompts: list[Any], counts: list[int], max_new_tokens: int, end_to_end: bool
) -> tuple[float, float, float | None]:
    """For one batch of the ideal (``Family.ideal_inputs``): seconds to the first token, inside the decoder layers
    during the prefill, and end to end (if ``end_to_end``); it generates every token it may, so it never finishes
    early by chance."""
    make_inputs = partial(adapter.family.ideal_inputs, prompts, counts)
    end_to_end_s = None
    with torch.inference_mode():
        prepare_s, inputs = timed(make_inputs, adapter.device)
        llm_s, layers_s = llm_prefill(adapter, inputs)
        if end_to_end:
            generation = adapter.generation_kwargs({"max_new_tokens": max_new_tokens})
            generate = partial(adapter.model.generate, **generation, min_new_tokens=max_new_tokens)
            end_to_end_s, _ = timed(lambda: generate(**make_inputs()), adapter.device)
    return prepare_s + llm_s, layers_s, end_to_end_s


def ratio(value: float | None, baseline: float | None) -> float | None:
    """value / baseline; None where either is unknown (a time not measured), nan where the baseline is 0."""
    if value is None or baseline is None:
        return None
    return value / baseline if baseline > 0 else float("nan")


def prompts_as_sent(adapter: Any, docs: list[dict], args: argparse.Namespace) -> list[Any]:
    """The adapter's own request -> prompt path, so a timed prefill sees exactly what generate_until sees."""
    return [adapter.generation_prompt(r)[0] for r in requests_for(adapter, docs, args.max_new_tokens)]


def in_batches(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def label(config: PruningConfig) -> str:
    """``rank@0.25``; ``rank+logits@0.25`` where the reading is not the default one."""
    if not config.selection.uses_budget:
        return config.strategy
    reading = f"+{config.scores}" if config.needs_scores and config.scores != DEFAULT_SCORES else ""
    return f"{config.strategy}{reading}@{config.keep_ratio:g}"


def compare_configs(
    adapter: Any, docs: list[dict], configs: list[PruningConfig], args: argparse.Namespace, full_depth: int
) -> list[dict]:
    """Per config: peak memory, prefill, LLM prefill and end-to-end seconds per sample, token counts, and the times of
    the ideal run: the same model fed only as many image tokens as the config kept, per sample, with no pruning
    machinery (no significance hooks, no selection, no re-padding).

    ``full_depth`` is the LLM depth the prefill stands for. When the loaded LLM is a slice of it, every decoder layer
    being the same, the prefill at full depth is the measured one plus (full_depth / slice - 1) times the time the
    pass spent inside the slice's layers; the prefill FLOPs are counted at full depth too."""
    # Memory in passes of its own, before any timing (see rss_follows_tensors), and never while timing, as the
    # sampling thread would compete for the CPU.
    memory, answers = {}, {}
    with rss_follows_tensors():
        for config in [configs[0], configs[-1]]:  # untimed: settle what a first run initialises
            adapter.pruning = config
            adapter.generate_until(requests_for(adapter, docs, args.max_new_tokens))
        for config in configs:
            adapter.pruning = config
            with PeakMemory(adapter.device) as peak:
                answers[config] = adapter.generate_until(requests_for(adapter, docs, args.max_new_tokens))
            memory[config] = peak.bytes / 2**20

    batches = in_batches(prompts_as_sent(adapter, docs, args), args.batch_size)
    measures = (
        "prefill_s", "llm_prefill_s", "llm_layers_s", "end_to_end_s", "ideal_prefill_s", "ideal_llm_layers_s",
        "ideal_end_to_end_s",
    )  # fmt: skip
    times = {config: {name: [] for name in measures} for config in configs}
    for round_index in range(args.warmup + args.repeats):
        for config in configs:
            adapter.pruning = config
            first_token = [time_to_first_token(adapter, batch) for batch in batches]
            if round_index >= args.warmup:
                for name, values in zip(
                    ("prefill_s", "llm_prefill_s", "llm_layers_s"), zip(*first_token, strict=True), strict=True
                ):
                    times[config][name].append(sum(values) / len(docs))
            if args.end_to_end:
                requests = requests_for(adapter, docs, args.max_new_tokens)
                end_to_end, answers[config] = timed(lambda r=requests: adapter.generate_until(r), adapter.device)
                if round_index >= args.warmup:
                    times[config]["end_to_end_s"].append(end_to_end / len(docs))
            kept = [image_tokens_kept(answer.token_counts) for answer in answers[config]]
            counts = in_batches(kept, args.batch_size)
            ideal_runs = [
                ideal_times(adapter, batch, count, args.max_new_tokens, args.end_to_end)
                for batch, count in zip(batches, counts, strict=True)
            ]
            if round_index >= args.warmup:
                names = ("ideal_prefill_s", "ideal_llm_layers_s", "ideal_end_to_end_s")
                for name, values in zip(names, zip(*ideal_runs, strict=True), strict=True):
                    if None not in values:
                        times[config][name].append(sum(values) / len(docs))

    family, depth = adapter.family, adapter.model.config.text_config.num_hidden_layers

    def full_depth_flops(config: PruningConfig, counts: Any) -> int:
        if full_depth == depth:
            return counts.prefill_flops
        if config.in_llm:
            raise ValueError(
                f"strategy={config.strategy} drops tokens inside the LLM, so its layers do not all cost the same and a "
                "slice of the LLM (--llm-layers) does not scale to the full depth: bench it on the whole LLM"
            )
        return (
            counts.prefill_flops
            - family.llm_flops(counts.input_tokens)
            + family.llm_flops(counts.input_tokens, full_depth)
        )

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
                "input_tokens": statistics.mean(c.input_tokens for c in counts),
                "prefill_flops": statistics.mean(full_depth_flops(config, c) for c in counts),
                **{name: statistics.median(seconds) if seconds else None for name, seconds in times[config].items()},
                "peak_memory_mib": memory[config],
            }
        )
    for row in rows:
        for key in ("prefill_s", "llm_prefill_s", "end_to_end_s", "peak_memory_mib"):
            row[key.rsplit("_", 1)[0] + "_vs_none"] = ratio(row[key], rows[0][key])
        # The compute-bound ideal: what prefill x none would be if time followed the estimated FLOPs.
        row["flops_vs_none"] = row["prefill_flops"] / rows[0]["prefill_flops"]
        extra_layers = full_depth / depth - 1
        row["full_prefill_s"] = row["prefill_s"] + extra_layers * row["llm_layers_s"]
        row["full_ideal_prefill_s"] = row["ideal_prefill_s"] + extra_layers * row["ideal_llm_layers_s"]
        row["full_prefill_vs_none"] = row["full_prefill_s"] / rows[0]["full_prefill_s"]
        row["full_prefill_vs_ideal"] = row["full_prefill_s"] / row["full_ideal_prefill_s"]
        row["prefill_vs_ideal"] = row["prefill_s"] / row["ideal_prefill_s"]
        row["end_to_end_vs_ideal"] = ratio(row["end_to_end_s"], row["ideal_end_to_end_s"])
        # Decoding cost per generated token, once the prompt is in the cache.
        # A difference of two medians: on a loaded machine it can come out negative, which no time is. None then.
        decode = None
        if row["end_to_end_s"] is not None:
            decode = (row["end_to_end_s"] - row["prefill_s"]) / max(row["output_tokens"], 1)
        row["decode_per_token_s"] = decode if decode is not None and decode > 0 else None
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


def depth_check(adapter: Any, deeper: Any, docs: list[dict], args: argparse.Namespace) -> dict[str, Any]:
    """The slice extrapolation put to the test: strategy=none's LLM prefill on ``deeper`` (the same architecture with
    twice the slice's decoder layers), measured and as predicted from the slice (its LLM prefill plus its time inside
    the layers once more), in interleaved rounds."""
    batches = in_batches(prompts_as_sent(adapter, docs, args), args.batch_size)
    seconds: dict[str, list[float]] = {"predicted": [], "measured": []}
    for model in (adapter, deeper):
        model.pruning = PruningConfig("none")
    for round_index in range(args.warmup + args.repeats):
        slice_runs = [time_to_first_token(adapter, batch) for batch in batches]
        deeper_runs = [time_to_first_token(deeper, batch) for batch in batches]
        if round_index >= args.warmup:
            seconds["predicted"].append(sum(llm + layers for _, llm, layers in slice_runs) / len(docs))
            seconds["measured"].append(sum(llm for _, llm, _ in deeper_runs) / len(docs))
    predicted, measured = statistics.median(seconds["predicted"]), statistics.median(seconds["measured"])
    return {
        "slice_layers": adapter.model.config.text_config.num_hidden_layers,
        "deeper_layers": deeper.model.config.text_config.num_hidden_layers,
        "predicted_llm_prefill_s": predicted,
        "measured_llm_prefill_s": measured,
        "measured_vs_predicted": measured / predicted,
    }

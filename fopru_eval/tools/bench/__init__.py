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
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import torch

from fopru_eval.core.config import DEFAULT_SCORES, PruningConfig, PruningConfigError
from fopru_eval.core.scoring import READINGS
from fopru_eval.core.strategies import STRATEGIES
from fopru_eval.tools.bench.models import FAMILIES, SIZES
from fopru_eval.tools.bench.parity import compare_reference
from fopru_eval.tools.bench.report import format_tables
from fopru_eval.tools.bench.runs import compare_configs, significance_cost, significance_cost_full_tower
from fopru_eval.tools.bench.workload import SPLIT, TASK, synthetic_docs

__all__ = ["FAMILIES", "add_arguments", "benchmark", "run"]


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


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Save a random checkpoint of the family, load it once through its chat adapter, and take every measurement."""
    started = time.perf_counter()
    # All the cores this process may run on (a container or taskset may allow fewer than the machine has).
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(cores)
    model = FAMILIES[args.model]
    docs = synthetic_docs(args.samples)
    configs = [PruningConfig("none")]
    for strategy in args.strategies:
        readings = args.scores if STRATEGIES.get(strategy).needs_scores else [DEFAULT_SCORES]
        configs += [PruningConfig(strategy, keep_ratio=r, scores=s) for s in readings for r in args.ratios]
    with tempfile.TemporaryDirectory(prefix="fopru-bench-") as tmp:
        path = model.save_checkpoint(args.size, tmp, args.device)
        adapter = model.chat_class()(
            pretrained=str(path), device=args.device, batch_size=args.batch_size, strategy="none",
            **model.adapter_args.get(args.size, {}),
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
                "family": model.label,
                "size": args.size,
                **architecture(adapter.model.config),
                "dtype": str(adapter.model.dtype).removeprefix("torch."),
                **model.adapter_args.get(args.size, {}),
                "parameters_m": sum(p.numel() for p in adapter.model.parameters()) / 1e6,
            },
            "settings": {key: getattr(args, key) for key in settings},
        }
        # First: memory needs an unfragmented heap.
        result["sweep"] = compare_configs(adapter, docs, configs, args)
        # As the adapter counts them (every doc shows one image of the same size).
        result["model"]["visual_tokens_per_image"] = result["sweep"][0]["visual_tokens_total"]
        # Both readings of the attention: the softmax map in chunks, the logits from mean queries and keys.
        by_scores: dict[str, dict[str, Any]] = {}
        for scores in READINGS:
            by_scores[scores] = {"this model's tower": significance_cost(adapter, docs, args, scores)}
            if args.full_tower:
                by_scores[scores]["published size"] = significance_cost_full_tower(model, adapter.device, args, scores)
        result["significance_by_scores"] = by_scores
        result["significance"] = by_scores[DEFAULT_SCORES]["this model's tower"]
        if args.full_tower:
            result["significance_full_tower"] = by_scores[DEFAULT_SCORES]["published size"]
        if args.compare:
            result["reference"] = compare_reference(model, adapter, path, docs, args)
    result["machine"]["load_average_1m_end"] = psutil.getloadavg()[0]
    result["total_s"] = time.perf_counter() - started
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    def ratios(text: str) -> list[float]:
        values = [float(value) for value in text.split(",") if value.strip()]
        if not all(0 < value <= 1 for value in values):
            raise argparse.ArgumentTypeError(f"{text}: every keep ratio must be in (0, 1]")
        return values

    def strategies(text: str) -> list[str]:
        values = [value.strip() for value in text.split(",") if value.strip()]
        for value in values:  # any strategy that takes a budget, a user's own included
            try:
                if not STRATEGIES.get(value).uses_budget:
                    raise argparse.ArgumentTypeError(f"{value} takes no budget: strategy=none is always measured")
            except PruningConfigError as error:
                raise argparse.ArgumentTypeError(str(error)) from None
        return values

    def readings(text: str) -> list[str]:
        values = [value.strip() for value in text.split(",") if value.strip()]
        if not values or not set(values) <= set(READINGS):
            raise argparse.ArgumentTypeError(f"{text}: accepted values are {', '.join(READINGS)}")
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
    parser.add_argument(
        "--scores", type=readings, default=[DEFAULT_SCORES],
        help=f"readings of the attention for the scoring strategies, e.g. logits,softmax (default {DEFAULT_SCORES}); "
        "the significance cost is always measured for both",
    )  # fmt: skip
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

"""Benchmark FoPru on a random model of any adapted family: prefill, end-to-end, memory, significance cost, parity.

``--model`` picks the family (``FAMILIES``): LLaVA-1.5, LLaVA-NeXT, Qwen2-VL or Qwen2.5-VL, each as a random checkpoint
of the real architecture. At ``--size full`` on a CPU only a slice of the published LLM's decoder layers is built, and
the prefill is scaled to its full depth from the time spent inside them (``compare_configs``, checked by
``depth_check``). The sweep, memory, prefill and end-to-end figures go through the adapter's own ``prepare``
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
from fopru_eval.tools.bench.models import FAMILIES, SIZES, BenchModel
from fopru_eval.tools.bench.parity import compare_reference
from fopru_eval.tools.bench.report import format_tables
from fopru_eval.tools.bench.runs import compare_configs, depth_check, significance_cost, significance_cost_full_tower
from fopru_eval.tools.bench.workload import SPLIT, TASK, synthetic_docs
from fopru_eval.tools.checkpoints.full_size import FAMILIES as FULL_SIZE_FAMILIES

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
        selection = STRATEGIES.get(strategy)
        readings = args.scores if selection.needs_scores and selection.stage == "vision" else [DEFAULT_SCORES]
        options = (("llm_layer", args.llm_layer),) if selection.stage == "llm" and args.llm_layer else ()
        configs += [
            PruningConfig(strategy, keep_ratio=r, scores=s, options=options) for s in readings for r in args.ratios
        ]
    with tempfile.TemporaryDirectory(prefix="fopru-bench-") as tmp:
        path = model.save_checkpoint(args.size, f"{tmp}/model", args.device, args.llm_layers)
        adapter = load_adapter(model, path, args, docs)
        loaded_depth = adapter.model.config.text_config.num_hidden_layers
        full_depth = model.full_llm_layers() if args.size == "full" else loaded_depth
        device = adapter.device
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
        settings = (
            "samples", "batch_size", "max_new_tokens", "repeats", "warmup", "ratios", "strategies", "throughput_batch",
            "end_to_end",
        )  # fmt: skip
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
                # A slice of the LLM when fewer than its full depth: the prefill is scaled up (see compare_configs).
                "llm_layers_full": full_depth,
            },
            "settings": {key: getattr(args, key) for key in settings},
        }
        # First: memory needs an unfragmented heap.
        result["sweep"] = compare_configs(adapter, docs, configs, args, full_depth)
        if loaded_depth < full_depth:
            deeper_layers = min(2 * loaded_depth, full_depth)
            deeper_path = model.save_checkpoint(args.size, f"{tmp}/deeper", args.device, deeper_layers)
            result["depth_check"] = depth_check(adapter, load_adapter(model, deeper_path, args, docs), docs, args)
        # As the adapter counts them (every doc shows one image of the same size).
        result["model"]["visual_tokens_per_image"] = result["sweep"][0]["visual_tokens_total"]
        # Both readings of the attention: the softmax map in chunks, the logits from mean queries and keys.
        by_scores: dict[str, dict[str, Any]] = {}
        own_tower = "published size (this model's tower)" if args.size == "full" else "this model's tower"
        for scores in READINGS:
            by_scores[scores] = {own_tower: significance_cost(adapter, docs, args, scores)}
            if args.full_tower:
                by_scores[scores]["published size"] = significance_cost_full_tower(model, adapter.device, args, scores)
        result["significance_by_scores"] = by_scores
        result["significance"] = by_scores[DEFAULT_SCORES][own_tower]
        if args.full_tower:
            result["significance_full_tower"] = by_scores[DEFAULT_SCORES]["published size"]
        if args.compare:
            # Enough docs for one full batch at the batched size.
            parity_docs = synthetic_docs(max(args.samples, args.throughput_batch))
            adapter.task_dict = {TASK: {SPLIT: parity_docs}}
            result["reference"] = compare_reference(model, adapter, path, parity_docs, args)
    result["machine"]["load_average_1m_end"] = psutil.getloadavg()[0]
    result["total_s"] = time.perf_counter() - started
    return result


def load_adapter(model: BenchModel, path: Path, args: argparse.Namespace, docs: list[dict]) -> Any:
    """The family's chat adapter on a saved checkpoint, at strategy=none, as lmms-eval would build it, with ``docs``
    as the benchmark task's."""
    adapter = model.default_class()(
        pretrained=str(path), device=args.device, batch_size=args.batch_size, strategy="none",
        **model.adapter_args.get(args.size, {}),
    )  # fmt: skip
    adapter.task_dict = {TASK: {SPLIT: docs}}
    return adapter


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
        "published 7B architecture with random bf16 weights, on a CPU with a slice of its LLM (--llm-layers)",
    )  # fmt: skip
    parser.add_argument("--full-size", dest="size", action="store_const", const="full", help="--size full")
    parser.add_argument(
        "--llm-layers", type=positive,
        help="at --size full, build only this many of the LLM's decoder layers and scale the prefill up to the full "
        "depth from the time spent inside them, checked against a run with twice as many (default: all on CUDA, 2 on "
        "a CPU)",
    )  # fmt: skip
    parser.add_argument("--samples", type=positive, help="synthetic images (default 4; 1 at --size full on a CPU)")
    parser.add_argument("--batch-size", type=positive, default=1, help="default 1")
    parser.add_argument("--max-new-tokens", type=positive, help="default 16; 2 at --size full on a CPU")
    parser.add_argument("--repeats", type=positive, default=3, help="timed rounds (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before them (default 1)")
    parser.add_argument(
        "--ratios", type=ratios,
        help="keep ratios (default 1,.5,.25,.11; at --size full 192, 128 and 64 of 576: 1/3, 2/9, 1/9)",
    )  # fmt: skip
    parser.add_argument(
        "--strategies", type=strategies, default=["rank", "row"],
        help="default rank,row; any strategy with a budget, e.g. rank,visionzip,vispruner,divprune,fastv",
    )  # fmt: skip
    parser.add_argument(
        "--llm-layer", type=positive,
        help="for strategies that drop tokens inside the LLM (fastv): the layer they drop after (default theirs, 2)",
    )  # fmt: skip
    parser.add_argument(
        "--scores", type=readings, default=[DEFAULT_SCORES],
        help=f"readings of the attention for the scoring strategies, e.g. logits,softmax (default {DEFAULT_SCORES}); "
        "the significance cost is always measured for both",
    )  # fmt: skip
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--compare", action=argparse.BooleanOptionalAction,
        help="run lmms-eval's own adapter beside ours at strategy=none, for parity and throughput (default: on, except "
        "at --size full)",
    )  # fmt: skip
    parser.add_argument(
        "--end-to-end", action=argparse.BooleanOptionalAction,
        help="also time whole generations, ours and the ideal's (default: on, except at --size full on a CPU)",
    )  # fmt: skip
    parser.add_argument(
        "--throughput-batch", type=positive, default=8,
        help="the batch size ours also runs at in that comparison (default 8)",
    )  # fmt: skip
    parser.add_argument(
        "--no-full-tower", dest="full_tower", action="store_false",
        help="skip the significance cost on the family's vision tower at its published size (minutes on a CPU)",
    )  # fmt: skip
    parser.set_defaults(run=run)


def resolve_defaults(args: argparse.Namespace) -> None:
    """Defaults that depend on the size and the device."""
    full, on_cpu = args.size == "full", torch.device(args.device).type == "cpu"
    if full and FAMILIES[args.model].full_size not in FULL_SIZE_FAMILIES:
        with_config = [name for name, model in FAMILIES.items() if model.full_size in FULL_SIZE_FAMILIES]
        raise ValueError(f"--size full has no published config for {args.model}; accepted: {', '.join(with_config)}")
    if args.llm_layers is not None and not full:
        raise ValueError(f"--llm-layers needs --size full (got --size {args.size})")
    if full and on_cpu and args.llm_layers is None:
        # Two of 32 decoder layers: a 7B LLM in full does not fit a small machine's memory, and would take minutes
        # per sample on its cores.
        args.llm_layers = 2
    if args.samples is None:
        args.samples = 1 if full and on_cpu else 4
    if args.max_new_tokens is None:
        # At full size on a CPU the prefill is the point: decoding 16 tokens through a 7B LM head per pass would
        # double the run.
        args.max_new_tokens = 2 if full and on_cpu else 16
    if args.ratios is None:
        args.ratios = [192 / 576, 128 / 576, 64 / 576] if full else [1.0, 0.5, 0.25, 0.11]
    if args.compare is None:
        args.compare = not full
    if args.end_to_end is None:
        # On a CPU at full size the prefill is the point, and each generate would run the whole tower again.
        args.end_to_end = not (full and on_cpu)
    if full:  # the benchmark model's own tower is the published one
        args.full_tower = False


def run(args: argparse.Namespace) -> int:
    try:
        resolve_defaults(args)
    except ValueError as error:
        print(f"fopru-eval bench: error: {error}", file=sys.stderr)
        return 2
    result = benchmark(args)
    print(format_tables(result))
    if args.output is not None:
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0

"""Parity and throughput against lmms-eval's own adapter for the family: strategy=none, same checkpoint, same
requests; theirs at batch size 1, ours at 1 and batched; answers compared sample for sample, time side by side."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from lmms_eval.api.instance import Instance

from fopru_eval.core.config import PruningConfig
from fopru_eval.tools.bench.measure import timed
from fopru_eval.tools.bench.models import BenchModel
from fopru_eval.tools.bench.workload import chat_requests, requests_for, simple_requests


def reference_model(family: BenchModel, adapter: Any, path: Path) -> tuple[Any, Callable[..., list[Instance]], str]:
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
    # Default settings on both sides: ours follows lmms-eval's image round trip and default dtype by itself.
    if family.reference == "qwen2_vl":
        from lmms_eval.models.simple.qwen2_vl import Qwen2_VL

        theirs = Qwen2_VL(pretrained=str(path), device=device, device_map=device, batch_size=1, **pixels)
        return theirs, simple_requests, "its only class, the simple one"
    if family.reference == "qwen2_5_vl":
        from lmms_eval.models.chat.qwen2_5_vl import Qwen2_5_VL

        theirs = Qwen2_5_VL(pretrained=str(path), device=device, device_map=device, batch_size=1, **pixels)
        return theirs, chat_requests, ""
    if family.reference == "qwen3_vl":
        from lmms_eval.models.chat.qwen3_vl import Qwen3_VL

        theirs = Qwen3_VL(pretrained=str(path), device=device, device_map=device, batch_size=1, **pixels)
        return theirs, chat_requests, ""
    raise ValueError(f"no lmms-eval reference adapter known as {family.reference!r}")


def compare_reference(
    family: BenchModel, adapter: Any, path: Path, docs: list[dict], args: argparse.Namespace
) -> dict[str, Any]:
    """strategy=none against lmms-eval's own adapter for the family: same checkpoint, same requests; theirs at batch
    size 1, ours at 1 and at ``args.throughput_batch``, in interleaved rounds. Answers are compared sample for sample,
    ours at both batch sizes with theirs and with each other. If that adapter cannot be built here (missing package,
    no offline or CPU support), the comparison is skipped with the reason."""
    try:
        theirs, their_requests, changes = reference_model(family, adapter, path)
    except Exception as error:  # noqa: BLE001 - reported, never silently: the rest of the benchmark stands
        return {"reference": family.reference, "skipped": f"{type(error).__name__}: {error}"}
    theirs.task_dict = adapter.task_dict
    adapter.pruning = PruningConfig("none")
    batched = f"ours_batch_{args.throughput_batch}"
    our_requests = partial(requests_for, adapter)
    runs = {"reference": (theirs, their_requests, 1), "ours": (adapter, our_requests, 1)}
    runs[batched] = (adapter, our_requests, args.throughput_batch)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    answers = {}
    for round_index in range(args.warmup + args.repeats):
        for name, (model, make_requests, batch_size) in runs.items():
            adapter.batch_size_per_gpu = batch_size
            requests = make_requests(docs, args.max_new_tokens)
            elapsed, answers[name] = timed(lambda m=model, r=requests: m.generate_until(r), adapter.device)
            if round_index >= args.warmup:
                seconds[name].append(elapsed / len(docs))
    adapter.batch_size_per_gpu = args.batch_size
    per_sample = {name: statistics.median(values) for name, values in seconds.items()}

    def text(answer: Any) -> str:  # a simple adapter may answer bare strings
        return answer if isinstance(answer, str) else answer.text

    def identical(first: str, second: str) -> int:
        return sum(text(a) == text(b) for a, b in zip(answers[first], answers[second], strict=True))

    return {
        "reference": family.reference,
        "changes": changes,
        "samples": len(docs),
        "throughput_batch": args.throughput_batch,
        "ours_end_to_end_s": per_sample["ours"],
        "reference_end_to_end_s": per_sample["reference"],
        "ours_vs_reference": per_sample["ours"] / per_sample["reference"],
        "ours_batched_end_to_end_s": per_sample[batched],
        # Samples per second as a multiple of lmms-eval's adapter's: the inverse ratio of the times per sample.
        "ours_throughput_vs_reference": per_sample["reference"] / per_sample["ours"],
        "ours_batched_throughput_vs_reference": per_sample["reference"] / per_sample[batched],
        "identical_answers": identical("ours", "reference"),
        "identical_batched_answers": identical(batched, "ours"),
        # llava_hf answers "" with no token counts when generate raises: count those apart.
        "reference_failed": sum(getattr(a, "token_counts", "") is None for a in answers["reference"]),
    }

"""The benchmark's result as Markdown tables."""

from __future__ import annotations

from typing import Any


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.1f}"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def load_warning(machine: dict[str, Any]) -> list[str]:
    """A marked warning when other work had more runnable threads than the machine has cores, at start or end."""
    loads = [machine.get("load_average_1m"), machine.get("load_average_1m_end")]
    busiest = max(load for load in loads if load is not None)
    if busiest <= machine["cpu_cores"]:
        return []
    return [
        f"**WARNING (!): load average {busiest:.1f} above the {machine['cpu_cores']} cores during this run: other work "
        "shared the machine, so absolute times are unreliable; the interleaved ratios less so.**",
        "",
    ]


def full_depth_table(result: dict[str, Any]) -> list[str]:
    """The prefill at the LLM's full depth, scaled up from a slice (nothing when the whole LLM ran), and how well
    the scaling predicted a run with twice the slice."""
    loaded, full = result["model"]["text_layers"], result["model"]["llm_layers_full"]
    if loaded >= full:
        return []
    lines = [
        "",
        f"At full depth: only {loaded} of the LLM's {full} decoder layers were built (all are identical), so the "
        f"prefill is the measured one plus {full / loaded - 1:g} x the time spent inside those {loaded} layers; the "
        "same for the ideal. FLOPs x none: the compute-bound ideal, the prefill FLOPs at full depth as a ratio to "
        "none's. Peak memory is the slice's.",
        "",
        "| config | visual tokens | prefill ms (full depth) | x none | x ideal | FLOPs x none | peak memory x none |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["sweep"]:
        lines.append(
            f"| {r['config']} | {r['visual_tokens_kept']:g} / {r['visual_tokens_total']:g} "
            f"| {r['full_prefill_s'] * 1e3:.0f} | {r['full_prefill_vs_none']:.2f} | {r['full_prefill_vs_ideal']:.2f} "
            f"| {r['flops_vs_none']:.2f} | {r['peak_memory_vs_none']:.2f} |"
        )
    check = result.get("depth_check")
    if check:
        lines += [
            "",
            f"Scaling check (strategy=none): the LLM prefill with {check['deeper_layers']} layers, predicted from the "
            f"{check['slice_layers']}-layer slice {check['predicted_llm_prefill_s'] * 1e3:.0f} ms, measured "
            f"{check['measured_llm_prefill_s'] * 1e3:.0f} ms: x {check['measured_vs_predicted']:.2f}.",
        ]
    return lines


def format_tables(result: dict[str, Any]) -> str:
    """Markdown: a header of machine facts, the sweep table, the ideal, the significance cost, the parity table."""
    m, model, s = result["machine"], result["model"], result["settings"]
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
        *load_warning(m),
        "| config | visual tokens | prefill ms | x none | FLOPs x none | LLM prefill ms | x none | decode ms/token "
        "| end-to-end ms | x none | output tokens | peak memory MiB | x none |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["sweep"]:
        lines.append(
            f"| {r['config']} | {r['visual_tokens_kept']:g} / {r['visual_tokens_total']:g} "
            f"| {r['prefill_s'] * 1e3:.1f} | {r['prefill_vs_none']:.2f} | {r['flops_vs_none']:.2f} "
            f"| {r['llm_prefill_s'] * 1e3:.1f} | {r['llm_prefill_vs_none']:.2f} | {_ms(r['decode_per_token_s'])} "
            f"| {_ms(r['end_to_end_s'])} | {_ratio(r['end_to_end_vs_none'])} | {r['output_tokens']:g} "
            f"| {r['peak_memory_mib']:.1f} | {r['peak_memory_vs_none']:.2f} |"
        )
    lines += full_depth_table(result)
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
        "| significance cost | scores | images | tower ms | significance ms | share | tower with hooks ms "
        "| difference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for scores, towers in result["significance_by_scores"].items():
        if not any(name.startswith("published size") for name in towers):
            lines.append(f"| published size | {scores} | n/a | n/a | n/a | n/a (--no-full-tower) | n/a | n/a |")
        for name, cost in towers.items():
            name = f"{name} ({cost['tower']})" if "tower" in cost else name
            lines.append(
                f"| {name} | {scores} | {cost['images']} | {cost['tower_s'] * 1e3:.1f} "
                f"| {cost['significance_s'] * 1e3:.1f} | {cost['share']:.1%} "
                f"| {cost['tower_with_significance_s'] * 1e3:.1f} | {cost['overhead']:+.1%} |"
            )
    if "reference" in result:
        c = result["reference"]
        lines += ["", f"Parity and throughput against lmms-eval's own {c['reference']} (batch size 1):", ""]
        if "skipped" in c:
            lines.append(f"Skipped: {c['skipped']}")
        else:
            changes = f" ({c['changes']})" if c["changes"] else ""
            batch = c["throughput_batch"]
            lines += [
                f"| strategy=none, {c['samples']} samples | batch size | end-to-end ms per sample "
                f"| samples/s x {c['reference']} | identical answers |",
                "|---|---|---|---|---|",
                f"| lmms-eval {c['reference']}{changes} | 1 | {c['reference_end_to_end_s'] * 1e3:.1f} | 1.00 "
                f"| ({c['reference_failed']} failures) |",
                f"| {model['adapter']} | 1 | {c['ours_end_to_end_s'] * 1e3:.1f} "
                f"| {c['ours_throughput_vs_reference']:.2f} | {c['identical_answers']} / {c['samples']} with "
                f"{c['reference']} |",
                f"| {model['adapter']} | {batch} | {c['ours_batched_end_to_end_s'] * 1e3:.1f} "
                f"| {c['ours_batched_throughput_vs_reference']:.2f} | {c['identical_batched_answers']} / "
                f"{c['samples']} with ours at batch size 1 |",
            ]
    lines += ["", f"Total benchmark time {result['total_s']:.0f} s."]
    return "\n".join(lines)

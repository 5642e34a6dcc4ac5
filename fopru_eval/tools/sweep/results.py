"""One sweep point's results on disk (lmms-eval's results JSON plus a ``fopru`` block, samples JSONL) and the flat
row per point that the summary, the curves and W&B are made of."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from fopru_eval.tools.sweep.plan import Point, SweepError

TOKENS = "visual_tokens_kept_mean"
MANIFEST = "manifest.json"
# What must match for a folder's finished points to be reused: the same model, args, tasks and versions.
MANIFEST_KEYS = ("model", "model_args", "model_class", "tasks", "limit", "versions")


def visual_token_stats(samples: dict[str, list[dict]], group_subtasks: dict[str, list[str]]) -> dict[str, Any]:
    """Mean visual tokens kept and total per doc, per task (groups: over their subtasks' docs) and overall.

    Each sample's ``token_counts`` holds one entry per request; a multiple-choice doc asks once per option with the
    same image, so its first entry stands for the doc.
    """
    per_doc: dict[str, list[tuple[int, int, int | None]]] = {}
    for task, task_samples in samples.items():
        counts = [_doc_counts(sample) for sample in task_samples]
        per_doc[task] = [c for c in counts if c is not None]

    def docs_of(name: str) -> list[tuple[int, int, int | None]]:
        if name in per_doc:
            return per_doc[name]
        return [c for subtask in group_subtasks.get(name, []) for c in docs_of(subtask)]

    names = list(dict.fromkeys([*samples, *group_subtasks]))
    return {
        "overall": _mean_counts([c for counts in per_doc.values() for c in counts]),
        "tasks": {name: _mean_counts(docs_of(name)) for name in names},
    }


def _doc_counts(sample: dict[str, Any]) -> tuple[int, int, int | None] | None:
    entries = [counts for counts in sample.get("token_counts") or [] if counts]
    for counts in entries:
        if counts.get("visual_tokens_kept") is not None:
            # Each request is a prefill of its own: a doc's FLOPs are its requests' sum.
            flops = [entry.get("prefill_flops") for entry in entries]
            return counts["visual_tokens_kept"], counts["visual_tokens_total"], None if None in flops else sum(flops)
    return None


def _mean_counts(counts: list[tuple[int, int, int | None]]) -> dict[str, float | int | None]:
    kept, total = sum(c[0] for c in counts), sum(c[1] for c in counts)
    flops = [c[2] for c in counts]
    return {
        "docs": len(counts),
        "visual_tokens_kept_mean": kept / len(counts) if counts else None,
        "visual_tokens_total_mean": total / len(counts) if counts else None,
        "visual_keep_fraction": kept / total if total else None,
        "prefill_flops_mean": sum(flops) / len(flops) if flops and None not in flops else None,
    }


def task_metrics(results: dict[str, Any]) -> dict[str, float]:
    """``{task}/{metric}`` -> value for every numeric metric, named as lmms-eval's own W&B logger names them, and
    ``{task}/{metric}_stderr`` where lmms-eval reports a numeric standard error."""
    from lmms_eval.loggers.utils import remove_none_pattern

    metrics = {}
    for task, values in results.get("results", {}).items():
        for key, value in values.items():
            metric, _ = remove_none_pattern(key)
            # stderr is "N/A" or a number (lmms-eval's other estimators, _clt and _clustered, are left out); a
            # submission-only metric is None: neither is a score.
            if metric == "alias" or ("_stderr" in metric and not metric.endswith("_stderr")) or isinstance(value, bool):
                continue
            if isinstance(value, int | float):
                metrics[f"{task}/{metric}"] = float(value)
    return metrics


def point_row(point: Point, results: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    """One flat row per point: what the summary CSV, the W&B table and the curves are made of."""
    overall = stats["overall"]
    row: dict[str, Any] = {
        "label": point.label,
        "method": point.method,
        "strategy": point.config.strategy,
        "significance": point.config.significance if point.config.needs_scores else None,
        "scores": point.config.scores if point.config.needs_scores else None,
        "keep_ratio": point.keep_ratio,
        "keep_tokens": point.config.keep_tokens,
        TOKENS: overall["visual_tokens_kept_mean"],
        "visual_tokens_total_mean": overall["visual_tokens_total_mean"],
        "visual_keep_fraction": overall["visual_keep_fraction"],
        "prefill_flops_mean": overall["prefill_flops_mean"],
    }
    for task, task_stats in stats["tasks"].items():
        row[f"{task}/{TOKENS}"] = task_stats["visual_tokens_kept_mean"]
    row.update(task_metrics(results))
    return row


def write_point(
    directory: Path, point: Point, results: dict[str, Any], samples: dict[str, list[dict]], model: str
) -> dict[str, Any]:
    """``results.json`` (lmms-eval's results, less its samples, plus a ``fopru`` block) and one samples JSONL per
    task. Adds the ``fopru`` block to ``results`` and names the model by its registry name there."""
    from lmms_eval.loggers.utils import _handle_non_serializable

    stats = visual_token_stats(samples, results.get("group_subtasks", {}))
    # simple_evaluate names a model instance by its class; the registry name is what reruns it.
    results["config"]["model"] = model
    results["fopru"] = {"point": point.label, "pruning": point.config.to_dict(), "visual_tokens": stats}
    directory.mkdir(parents=True, exist_ok=True)
    for task, task_samples in samples.items():
        with open(directory / f"samples_{task}.jsonl", "w", encoding="utf-8") as file:
            for sample in task_samples:
                file.write(json.dumps(_loggable(sample), default=_handle_non_serializable, ensure_ascii=False) + "\n")
    # results.json last, and whole or not at all: it marks the point finished (``finished_row``).
    dumped = json.dumps(results, indent=2, default=_handle_non_serializable, ensure_ascii=False)
    partial = directory / "results.json.partial"
    partial.write_text(dumped + "\n", encoding="utf-8")
    partial.replace(directory / "results.json")
    return point_row(point, results, stats)


def finished_row(directory: Path, point: Point) -> dict[str, Any] | None:
    """The row of a point an earlier run of the same sweep finished in ``directory``, read back from its results;
    None if it has not finished there."""
    path = directory / "results.json"
    if not path.exists():
        return None
    results = json.loads(path.read_text(encoding="utf-8"))
    return point_row(point, results, results["fopru"]["visual_tokens"])


def sweep_manifest(about: dict[str, Any]) -> dict[str, Any]:
    """What a sweep's points were made with: ``about``'s model, args, tasks and limit, and the package versions."""
    from importlib.metadata import version

    versions = {name: version(name) for name in ("fopru-eval", "lmms-eval", "transformers", "torch")}
    return {**{key: about[key] for key in MANIFEST_KEYS if key != "versions"}, "versions": versions}


def resume_manifest(directory: Path, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest an earlier run left in ``directory`` (None if none did), refused if its points were made with
    another model, args, tasks, limit or versions: they cannot be mixed with this run's into one summary."""
    path = directory / MANIFEST
    if not path.exists():
        return None
    stored = json.loads(path.read_text(encoding="utf-8"))
    differ = [f"{key}: {stored.get(key)!r} there, {manifest[key]!r} now" for key in MANIFEST_KEYS
              if stored.get(key) != manifest[key]]  # fmt: skip
    if differ:
        raise SweepError(
            f"{directory} holds the points of another sweep ({'; '.join(differ)}): give another --output_path, "
            "or remove that folder"
        )
    return stored


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _loggable(sample: dict[str, Any]) -> dict[str, Any]:
    # As lmms-eval's own samples files: the doc (images) and the request arguments (functions) stay out, the prompt
    # goes in as "input".
    record = {key: value for key, value in sample.items() if key not in ("doc", "arguments")}
    arguments = sample.get("arguments") or [None]
    record["input"] = arguments[0]
    return record


def write_summary(directory: Path, rows: list[dict[str, Any]], points: list[Point], about: dict[str, Any]) -> None:
    """``summary.json`` (every point's row and full pruning config) and ``summary.csv`` (the rows)."""
    summary = {**about, "points": rows, "pruning": {p.label: p.config.to_dict() for p in points}}
    (directory / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(directory / "summary.csv", "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

"""``fopru-eval demo``: the shipped model on the shipped benchmark, every method at peers' budgets, offline.

It runs the sweep (one lmms-eval evaluation per point, on one loaded model) and then writes, beside the sweep's
``summary.csv`` and curve PNG, the table of every method x budget overall and per question kind (``table.md``), and a
picture of what each method keeps of one scene at the smallest budget (``kept_tokens.png``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

# Every method the package has: FoPru rank and row, CLS attention with rank selection, each in both readings of the
# attention, the controls, and the peer methods at their papers' settings (softmax attention, as their code reads it).
# The sweep's default budgets are peers' 192, 128 and 64 of the model's 576 tokens.
DEMO_METHODS = "rank,row,rank+cls,random,uniform,visionzip+softmax,vispruner+softmax,divprune,fastv"
KINDS = ("attribute", "existence", "count", "relation")


def task_name(split: str) -> str:
    return "fopru_demo_dev" if split == "dev" else "fopru_demo"


def run_demo(
    output_path: Path,
    split: str = "test",
    limit: int | None = None,
    wandb_project: str | None = None,
    checkpoint: Path | None = None,
) -> int:
    """Sweep, table and pictures into ``output_path/<task>[-limit<N>]``; the sweep's exit status.

    ``checkpoint`` is a demo model of one's own (``python -m fopru_eval.tools.demo.train --output DIR``); by default
    the shipped one."""
    from fopru_eval.tools import sweep
    from fopru_eval.tools.demo import CHECKPOINT, DEMO_POSITIONS

    checkpoint = CHECKPOINT if checkpoint is None else checkpoint
    if not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(f"--checkpoint {checkpoint}: no config.json there; expected a demo model's folder")

    task = task_name(split)
    # One folder per split and limit, so that a rerun resumes its own points and never meets another run's.
    output = output_path / (task if limit is None else f"{task}-limit{limit}")
    sweep_argv = [
        "--model", "llava_fopru", "--model_args", f"pretrained={checkpoint},positions={DEMO_POSITIONS}",
        "--tasks", task,
        "--strategies", DEMO_METHODS, "--scores", "logits,softmax", "--device", "cpu",
        "--batch_size", "16", "--output_path", str(output),
    ]  # fmt: skip
    if limit is not None:
        sweep_argv += ["--limit", str(limit)]
    if wandb_project:
        sweep_argv += ["--wandb-project", wandb_project]
    sweep_parser = argparse.ArgumentParser()
    sweep.add_arguments(sweep_parser)
    sweep_args = sweep_parser.parse_args(sweep_argv)
    status = sweep_args.run(sweep_args)
    if status != 0:
        return status
    summary = json.loads((output / "summary.json").read_text(encoding="utf-8"))
    table = kinds_table(summary["points"], task)
    (output / "table.md").write_text(table, encoding="utf-8")
    picture = write_picture(summary["points"], task, output / "kept_tokens.png", checkpoint)
    print(f"\n{table}\nfopru-eval demo: {output / 'table.md'}, {picture}")
    return 0


def kinds_table(rows: list[dict[str, Any]], task: str) -> str:
    """Markdown: every point's accuracy overall, as a share of the unpruned model's, and per question kind."""
    none = next(row for row in rows if row["strategy"] == "none")
    header = "| method | budget | tokens kept | exact match | x none | " + " | ".join(KINDS) + " |"
    lines = [header, "|" + "---|" * (5 + len(KINDS))]
    for row in rows:
        score = row[f"{task}/exact_match"]
        kinds = " | ".join(f"{row[f'{task}/{kind}']:.3f}" for kind in KINDS)
        share = score / none[f"{task}/exact_match"] if none[f"{task}/exact_match"] else float("nan")
        budget = row["keep_tokens"] or "all"
        tokens = row[f"{task}/visual_tokens_kept_mean"]
        lines.append(f"| {row['method']} | {budget} | {tokens:g} | {score:.3f} | {share:.2f} | {kinds} |")
    return "\n".join(lines) + "\n"


def write_picture(rows: list[dict[str, Any]], task: str, path: Path, checkpoint: Path) -> Path:
    """What each method kept of the split's first scene at the smallest budget of the run."""
    import pyarrow.parquet as pq

    import fopru_eval_tasks
    from fopru_eval.core.config import PruningConfig
    from fopru_eval.families.llava import Llava
    from fopru_eval.tools.demo import scenes
    from fopru_eval.tools.demo.pictures import write_kept_pictures

    data = Path(fopru_eval_tasks.__file__).parent / "fopru_demo" / "data" / f"{task}.parquet"
    doc = pq.read_table(data).slice(0, 1).to_pylist()[0]
    smallest = min(row["keep_tokens"] for row in rows if row["keep_tokens"] is not None)
    configs = {}
    for row in rows:
        if row["keep_tokens"] == smallest:
            args = {name: row[name] for name in ("strategy", "keep_tokens", "significance", "scores") if row[name]}
            config = PruningConfig.from_model_args(args)[0]
            if not config.in_llm:  # what FastV keeps depends on the question's run through the LLM, not the scene
                configs[row["label"]] = config
    family = Llava.load(str(checkpoint))
    image = scenes.make_scene(doc["scene_seed"]).image
    # The doc key lmms-eval's run gives doc 0 of the task's only split, so random draws what it drew there.
    return write_kept_pictures(family, configs, image, doc["question"], f"{task}/test/0", path)

"""The shipped demo: its trained checkpoint loads offline and scores what the README says on the demo task."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from transformers import AutoProcessor, LlavaForConditionalGeneration

from conftest import TASKS_DIR
from fopru_eval.tools.demo import CHECKPOINT, NONE_ACCURACY, NONE_TOLERANCE, RANDOM_011_MAX_ACCURACY, scenes

BIN = Path(sys.executable).parent


def demo_accuracy(tmp_path: Path, model_args: str) -> tuple[float, list[dict]]:
    """Run the lmms-eval CLI as the README does; return exact match and the logged samples."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    output = tmp_path / "out"
    command = [str(BIN / "lmms-eval"), "--model", "llava_fopru", "--model_args",
               f"pretrained={CHECKPOINT},{model_args}", "--tasks", "fopru_demo", "--include_path", str(TASKS_DIR),
               "--batch_size", "16", "--device", "cpu", "--output_path", str(output), "--log_samples"]  # fmt: skip
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    [results_file] = output.glob("*/*_results.json")
    [samples_file] = output.glob("*/*_samples_fopru_demo.jsonl")
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    return json.loads(results_file.read_text())["results"]["fopru_demo"]["exact_match,none"], samples


def test_the_shipped_checkpoint_is_a_small_llava_1_5() -> None:
    model = LlavaForConditionalGeneration.from_pretrained(CHECKPOINT)
    processor = AutoProcessor.from_pretrained(CHECKPOINT)
    assert model.config.vision_feature_layer == -2 and model.config.vision_feature_select_strategy == "default"
    vision = model.config.vision_config
    assert vision.model_type == "clip_vision_model" and vision.image_size == scenes.IMAGE_SIZE
    assert (vision.image_size // vision.patch_size) ** 2 == 64
    assert sum(p.stat().st_size for p in CHECKPOINT.glob("*.safetensors")) < 8 * 2**20
    # Every answer is one token of the shipped tokenizer.
    for word in [*scenes.COLORS, *scenes.SHAPES, *scenes.COUNT_WORDS.values()]:
        assert len(processor.tokenizer.encode(" " + word, add_special_tokens=False)) == 1


def test_unpruned_demo_model_scores_what_the_readme_says(tmp_path: Path) -> None:
    accuracy, samples = demo_accuracy(tmp_path, "strategy=none")
    assert len(samples) == 200
    assert all(s["token_counts"][0]["visual_tokens_kept"] == 64 for s in samples)
    assert abs(accuracy - NONE_ACCURACY) <= NONE_TOLERANCE, accuracy


def test_random_pruning_to_11_percent_hurts_the_demo_model(tmp_path: Path) -> None:
    accuracy, samples = demo_accuracy(tmp_path, "strategy=random,keep_ratio=0.11")
    assert all(s["token_counts"][0]["visual_tokens_kept"] == 7 for s in samples)
    assert accuracy <= RANDOM_011_MAX_ACCURACY, accuracy


def test_the_demo_command_draws_the_curve(tmp_path: Path) -> None:
    """`fopru-eval demo`: the shipped model on the shipped benchmark, every point and the PNG, offline. On 40 of the
    200 questions, to keep the suite short (25 points); the unpruned accuracy on all 200 is checked above."""
    from fopru_eval.tools.cli import main

    output = tmp_path / "demo"
    assert main(["demo", "--output-path", str(output), "--limit", "40"]) == 0
    [summary] = output.rglob("summary.csv")
    rows = list(csv.DictReader(summary.read_text().splitlines()))
    # Every method at the demo's share of peers' budgets (192, 128, 64 of 576: 21, 14 and 7 of its 64 tokens).
    methods = ["rank+logits", "rank+softmax", "row+logits", "row+softmax", "rank+cls+logits", "rank+cls+softmax"]
    expected = {"none@1"} | {f"{m}@{r}" for m in [*methods, "random", "uniform"] for r in ("0.333", "0.222", "0.111")}
    assert {row["label"] for row in rows} == expected
    none = next(row for row in rows if row["label"] == "none@1")
    assert (none["method"], none["strategy"]) == ("none", "none") and 0 < float(none["fopru_demo/exact_match"]) <= 1
    # lmms-eval's standard error comes along, for the error bars.
    assert 0 < float(none["fopru_demo/exact_match_stderr"]) < 0.1
    kept = {row["label"]: float(row["visual_tokens_kept_mean"]) for row in rows}
    assert kept["rank+logits@0.333"] == kept["uniform@0.333"] == 21 and kept["random@0.111"] == 7
    assert (summary.parent / "curves_fopru_demo.png").stat().st_size > 0

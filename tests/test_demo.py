"""The shipped demo: its scenes are deterministic, its trained checkpoint loads offline with LLaVA-1.5's geometry and
scores what the README says, and ``fopru-eval demo`` writes the curve, the table per question kind and the pictures."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from conftest import TASKS_DIR
from fopru_eval.tools.demo import (
    CHECKPOINT,
    DEMO_POSITIONS,
    NONE_ACCURACY,
    NONE_TOLERANCE,
    RANDOM_64_MAX_ACCURACY,
    scenes,
    train,
    vision_pretraining,
)

BIN = Path(sys.executable).parent
KINDS = ("attribute", "existence", "count", "relation")
# sha256 of the pixels of scenes 0, 1 and the first test scene: the benchmark stores seeds, so every machine must draw
# the same pixels from them (the same with Pillow 10.0.1 and 13.0 and their numpy).
SCENE_DIGEST = "3f0b59099b914a9c29a39cb65379005160b7c3b3cb3a9eea5d0cf3b301617f4a"


def scene_digest() -> str:
    digest = hashlib.sha256()
    for seed in (0, 1, scenes.TEST_SEED_OFFSET):
        digest.update(scenes.make_scene(seed).image.tobytes())
    return digest.hexdigest()


# ----- the scenes -------------------------------------------------------------------------------------------------


def test_a_seed_always_draws_the_same_scene() -> None:
    assert scene_digest() == SCENE_DIGEST
    # And in a fresh interpreter (no state carried over from this one, another hash seed).
    code = "from test_demo import scene_digest; print(scene_digest())"
    env = {**os.environ, "PYTHONHASHSEED": "123", "PYTHONPATH": str(Path(__file__).parent)}
    fresh = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert fresh.stdout.strip() == SCENE_DIGEST
    assert scenes.make_scene(5).image.tobytes() != scenes.make_scene(6).image.tobytes()


def test_scenes_are_mostly_background_with_small_objects() -> None:
    for seed in range(20):
        scene = scenes.make_scene(seed)
        assert scene.image.size == (336, 336)
        covered = [label for label in vision_pretraining.patch_labels(scene, "color") if label]
        # Each object covers a few of the 576 patches; together at most about a tenth of the image.
        assert len(scene.objects) <= len(covered) <= 10 * len(scene.objects) <= 60
        assert len({o.cell for o in scene.objects}) == len(scene.objects)


def test_questions_follow_the_scene() -> None:
    rng = random.Random(0)
    answers: Counter[tuple[str, str]] = Counter()
    for seed in range(300):
        scene = scenes.make_scene(seed)
        described = {(o.color, o.shape) for o in scene.objects}
        for kind in KINDS:
            question = scenes.make_question(scene, kind, rng)
            if question is None:
                assert kind == "relation"
                continue
            answers[kind, question.answer] += 1
            words = question.text.rstrip("?").split()
            if kind == "count":  # clutter is not counted
                assert question.answer == scenes.COUNT_WORDS[len(scene.objects)]
            elif kind == "existence":
                assert question.answer == ("yes" if (words[-2], words[-1]) in described else "no")
            elif kind == "relation":  # the named object is unique, and its neighbour is the answer
                named = (words[-2], words[-1])
                [ref] = [o for o in scene.objects if (o.color, o.shape) == named]
                relation = " ".join(words[3:-3] if words[1] == "shape" else words[5:-3])
                dr, dc = scenes.RELATIONS[relation]
                target = scene.at(ref.row + dr, ref.col + dc)
                assert question.answer in (target.color, target.shape)
            else:
                where = question.text.split(" in the ")[1].rstrip("?")
                [obj] = [o for o in scene.objects if scenes.position_name(o.row, o.col) == where]
                assert question.answer in (obj.color, obj.shape)
    # Existence asks about absent objects as often as present ones.
    assert abs(answers["existence", "yes"] - answers["existence", "no"]) < 50


def test_splits_are_disjoint_from_training_and_balanced() -> None:
    for name, first in (("fopru_demo", scenes.TEST_SEED_OFFSET), ("fopru_demo_dev", scenes.DEV_SEED_OFFSET)):
        rows = pq.read_table(TASKS_DIR / "fopru_demo" / "data" / f"{name}.parquet").to_pylist()
        assert len(rows) == 500
        assert all(row["scene_seed"] >= first for row in rows)
        assert Counter(row["question_kind"] for row in rows) == dict.fromkeys(KINDS, 125)
    # Training draws below the dev seeds.
    assert scenes.LANGUAGE_SEED_OFFSET + 10**8 <= scenes.DEV_SEED_OFFSET < scenes.TEST_SEED_OFFSET
    # The stored rows are what the generator draws from their seeds.
    [scene, question] = scenes.make_test_docs(1)[0]
    first = pq.read_table(TASKS_DIR / "fopru_demo" / "data" / "fopru_demo.parquet").slice(0, 1).to_pylist()[0]
    assert (first["scene_seed"], first["question"], first["answer"]) == (scene.seed, question.text, question.answer)


def test_each_scene_is_drawn_once_per_process() -> None:
    """lmms-eval loads a task's utils module afresh whenever it builds the task (a sweep: at every point), so the cache
    of drawn scenes must outlive the module; else every point redraws 500 scenes (4 s of the demo's 9 s a point)."""
    import importlib.util

    def fresh_utils():  # as lmms-eval's !function loads it
        spec = importlib.util.spec_from_file_location("utils", TASKS_DIR / "fopru_demo" / "utils.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    doc = {"scene_seed": scenes.TEST_SEED_OFFSET + 3}
    [first], [second] = fresh_utils().demo_doc_to_visual(doc), fresh_utils().demo_doc_to_visual(doc)
    assert first is second
    assert first.tobytes() == scenes.make_scene(doc["scene_seed"]).image.tobytes()


# ----- the checkpoint ---------------------------------------------------------------------------------------------


def demo_accuracy(tmp_path: Path, model_args: str) -> tuple[dict[str, float], list[dict]]:
    """Run the lmms-eval CLI as the README does; return the task's metrics and the logged samples."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    output = tmp_path / "out"
    command = [str(BIN / "lmms-eval"), "--model", "llava_fopru", "--model_args",
               f"pretrained={CHECKPOINT},{model_args}", "--tasks", "fopru_demo", "--include_path", str(TASKS_DIR),
               "--batch_size", "16", "--device", "cpu", "--output_path", str(output), "--log_samples"]  # fmt: skip
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    [results_file] = output.glob("*/*_results.json")
    [samples_file] = output.glob("*/*_samples_fopru_demo.jsonl")
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    metrics = json.loads(results_file.read_text())["results"]["fopru_demo"]
    return {key.split(",")[0]: value for key, value in metrics.items() if key.endswith(",none")}, samples


def test_the_shipped_checkpoint_has_llava_1_5_geometry() -> None:
    model = LlavaForConditionalGeneration.from_pretrained(CHECKPOINT)
    processor = AutoProcessor.from_pretrained(CHECKPOINT)
    assert model.config.vision_feature_layer == -2 and model.config.vision_feature_select_strategy == "default"
    vision = model.config.vision_config
    assert vision.model_type == "clip_vision_model" and (vision.image_size, vision.patch_size) == (336, 14)
    assert processor.num_additional_image_tokens == 1  # the CLS token
    assert sum(p.stat().st_size for p in CHECKPOINT.glob("*.safetensors")) < 30 * 2**20
    for word in scenes.answer_words():  # every answer is one token
        assert len(processor.tokenizer.encode(" " + word, add_special_tokens=False)) == 1


def test_unpruned_demo_model_scores_what_the_readme_says(tmp_path: Path) -> None:
    metrics, samples = demo_accuracy(tmp_path, "strategy=none")
    assert len(samples) == 500
    assert all(s["token_counts"][0]["visual_tokens_kept"] == 576 for s in samples)
    assert abs(metrics["exact_match"] - NONE_ACCURACY) <= NONE_TOLERANCE, metrics
    # Each doc counts once overall and once in its kind, 125 docs a kind: the overall score is the kinds' mean.
    assert abs(metrics["exact_match"] - sum(metrics[kind] for kind in KINDS) / 4) < 1e-9


def test_random_pruning_to_64_tokens_hurts_the_demo_model(tmp_path: Path) -> None:
    metrics, samples = demo_accuracy(tmp_path, f"strategy=random,keep_tokens=64,positions={DEMO_POSITIONS}")
    assert all(s["token_counts"][0]["visual_tokens_kept"] == 64 for s in samples)
    assert metrics["exact_match"] <= RANDOM_64_MAX_ACCURACY, metrics


# ----- the command ------------------------------------------------------------------------------------------------


def test_the_demo_command_writes_curve_table_and_pictures(tmp_path: Path) -> None:
    """`fopru-eval demo`: the shipped model on the shipped benchmark, every point, offline. On 24 of the 500
    questions, to keep the suite short; the unpruned accuracy on all 500 is checked above."""
    from fopru_eval.tools.cli import main

    output = tmp_path / "demo"
    # A model of one's own goes in with --checkpoint: here a copy of the shipped one, so the scores stay comparable.
    checkpoint = tmp_path / "my-demo-model"
    shutil.copytree(CHECKPOINT, checkpoint)
    assert main(["demo", "--output-path", str(output), "--limit", "24", "--checkpoint", str(checkpoint)]) == 0
    [summary] = output.rglob("summary.csv")
    manifest = json.loads((summary.parent / "manifest.json").read_text())
    assert manifest["model_args"] == f"pretrained={checkpoint},positions=original"
    rows = list(csv.DictReader(summary.read_text().splitlines()))
    # Every method at peers' budgets: 192, 128 and 64 of the model's 576 tokens; the peer methods at their settings.
    methods = ["rank+logits", "rank+softmax", "row+logits", "row+softmax", "rank+cls+logits", "rank+cls+softmax"]
    methods += ["random", "uniform", "visionzip+softmax", "vispruner+softmax", "divprune", "fastv"]
    expected = {"none@1"} | {f"{m}@{k}tok" for m in methods for k in (192, 128, 64)}
    assert {row["label"] for row in rows} == expected
    none = next(row for row in rows if row["label"] == "none@1")
    assert (none["method"], none["strategy"]) == ("none", "none") and 0 < float(none["fopru_demo/exact_match"]) <= 1
    assert 0 < float(none["fopru_demo/exact_match_stderr"]) < 0.2  # lmms-eval's standard error, for the error bars
    kept = {row["label"]: float(row["visual_tokens_kept_mean"]) for row in rows}
    assert kept["rank+logits@128tok"] == kept["uniform@128tok"] == 128 and kept["random@64tok"] == 64
    assert kept["row+softmax@64tok"] == 48  # whole rows of 24
    # A merged token counts as one; FastV's count is what its layers from 2 on kept.
    assert kept["visionzip+softmax@64tok"] == kept["divprune@64tok"] == kept["fastv@64tok"] == 64
    for row in rows:  # 6 docs of each kind in the first 24; each kind's score is its share of the overall hits
        assert abs(sum(float(row[f"fopru_demo/{k}"]) for k in KINDS) / 4 - float(row["fopru_demo/exact_match"])) < 1e-9
    folder = summary.parent
    assert (folder / "curves_fopru_demo.png").stat().st_size > 0
    table = (folder / "table.md").read_text().splitlines()
    assert table[0].startswith("| method | budget | tokens kept | exact match | x none | attribute")
    assert len(table) == 2 + len(rows)
    # One panel for the scene and one per method at 64 tokens, 3 to a row; FastV has none (what it keeps depends on
    # the question's run through the LLM).
    from PIL import Image

    with Image.open(folder / "kept_tokens.png") as picture:
        assert picture.size == (3 * 336, 4 * (336 + 30))


def test_a_demo_checkpoint_that_is_not_a_model_is_refused(tmp_path: Path) -> None:
    from fopru_eval.tools.cli import main

    with pytest.raises(FileNotFoundError, match="--checkpoint .*no config.json"):
        main(["demo", "--output-path", str(tmp_path / "demo"), "--checkpoint", str(tmp_path)])
    assert not (tmp_path / "demo").exists()


def test_a_misspelt_training_option_is_refused() -> None:
    with pytest.raises(ValueError, match="patch_classes='colour'; accepted values: color, object"):
        train.TrainConfig(patch_classes="colour")
    with pytest.raises(ValueError, match="patch_layer=-4; accepted values: -3 to -1"):
        train.TrainConfig(patch_layer=-4)
    with pytest.raises(ValueError, match="turns='single'; accepted values: conversation, separate"):
        train.TrainConfig(turns="single")


def test_patch_cells_follow_the_grid() -> None:
    cells = vision_pretraining.patch_cells().view(24, 24)
    assert cells[0, 0] == 0 and cells[0, 23] == 2 and cells[23, 0] == 6 and cells[23, 23] == 8
    assert cells[7, 7] == 0 and cells[8, 8] == 4 and cells[8, 16] == 5
    assert all((cells == cell).sum() == 64 for cell in range(9))


def test_stage_one_is_reused_only_from_a_run_with_the_same_stage_one(tmp_path: Path) -> None:
    report = json.loads((CHECKPOINT / "training_report.json").read_text())
    cfg = train.TrainConfig(**{k: v for k, v in report["config"].items() if k in train.STAGE1_FIELDS})
    tokenizer = train.build_tokenizer()
    model = train.build_model(tokenizer, cfg)
    seconds, accuracy = train.reuse_vision(model, CHECKPOINT, cfg)
    assert (seconds, accuracy) == (report["stage1_seconds"], report["stage1_heldout_cell_accuracy"])
    shipped = LlavaForConditionalGeneration.from_pretrained(CHECKPOINT).model.vision_tower.state_dict()
    assert all(torch.equal(value, model.model.vision_tower.state_dict()[name]) for name, value in shipped.items())
    with pytest.raises(ValueError, match="its stage 1 differs from this run's in vision_steps"):
        train.reuse_vision(model, CHECKPOINT, dataclasses.replace(cfg, vision_steps=cfg.vision_steps + 1))


def test_separate_turns_compute_exactly_what_single_turn_prompts_do() -> None:
    """A packed row of separate turns must give every answer token the logits its own single-turn prompt gives at
    inference; the row is padded (a second, longer row in the batch) to check padding too."""
    cfg = train.TrainConfig(
        vision_hidden=16, vision_layers=2, vision_heads=2, text_hidden=32, text_layers=2, text_heads=2
    )
    tokenizer = train.build_tokenizer()
    processor, model = train.build_processor(tokenizer), train.build_model(tokenizer, cfg).eval()
    seeds = range(7, 9)
    batch = train.language_batch(processor, seeds, per_kind=2, turns="separate")
    with torch.no_grad():
        packed = model(**batch).logits
    rows = [train.encode_separate_turns(processor, scenes.make_example(seed, 2)[1]) for seed in seeds]
    row = min(range(len(rows)), key=lambda r: len(rows[r][0]))  # the padded one
    scene, questions = scenes.make_example(seeds[row], 2)
    row_ids, _, turns, _ = rows[row]
    pad = batch["input_ids"].shape[1] - len(row_ids)
    assert pad > 0 and batch["input_ids"][row, pad:].tolist() == row_ids
    for turn, question in enumerate(questions, start=1):
        ids, labels = train.encode_conversation(processor, [question])
        with torch.no_grad():
            image = vision_pretraining.pixels(processor, [scene.image])
            single = model(input_ids=torch.tensor([ids]), pixel_values=image).logits
        in_row = [pad + i for i, t in enumerate(turns) if t == turn]
        own = len(ids) - len(in_row)  # where this turn's tokens start in its single-turn prompt
        assert labels[own:] == batch["labels"][row, in_row].tolist()
        torch.testing.assert_close(packed[row, in_row], single[0, own:], atol=1e-5, rtol=1e-4)
    assert max(turns) == len(questions) > 5

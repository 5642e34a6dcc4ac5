"""The lmms-eval CLI end to end on a tiny saved checkpoint and the offline tasks in tasks/."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoProcessor

from conftest import (
    broken_task,
    draw_image,
    lmms_eval,
    offline_runs,
    read_offline_run,
    results_of,
    user_turn,
)
from fopru_eval.core.config import PruningConfig

IMAGE = draw_image("red", (0, 0, 8, 8))  # any image: only the placeholder count matters


@pytest.mark.parametrize(
    ("name", "chat_class", "simple_class"),
    [
        ("llava_fopru", "LlavaFoPruChat", "LlavaFoPru"),
        ("llava_next_fopru", "LlavaNextFoPruChat", "LlavaNextFoPru"),
        # Simple only, as lmms-eval's own qwen2_vl.
        ("qwen2_vl_fopru", "Qwen2VLFoPru", "Qwen2VLFoPru"),
        ("qwen2_5_vl_fopru", "Qwen2_5_VLFoPruChat", "Qwen2_5_VLFoPru"),
    ],
)
def test_the_adapters_resolve_through_the_entry_point(name: str, chat_class: str, simple_class: str) -> None:
    from lmms_eval.models import get_model

    assert get_model(name).__name__ == chat_class
    assert get_model(name, force_simple=True).__name__ == simple_class


def test_pruned_generation_run_reports_results_and_token_counts(tiny_llava: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    model_args = f"pretrained={tiny_llava},strategy=rank,keep_ratio=0.25"
    run = lmms_eval(["--model", "llava_fopru", "--model_args", model_args, "--tasks", "fopru_shapes_gen",
                     "--batch_size", "4", "--limit", "8", "--device", "cpu", "--wandb_args", "project=t"],
                    output)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # lmms-eval's W&B run (offline here) holds its own results and, from the adapter, what it prunes.
    [run_dir] = offline_runs(tmp_path)
    wandb_run = read_offline_run(run_dir)
    assert ("results", "eval_results") in wandb_run.artifacts
    assert wandb_run.config["fopru"] == {"adapter": "llava_fopru", "pretrained": str(tiny_llava),
                                         **PruningConfig(strategy="rank", keep_ratio=0.25).to_dict()}  # fmt: skip
    results, samples = results_of(output)
    assert "exact_match,none" in results["results"]["fopru_shapes_gen"]
    assert "strategy=rank,keep_ratio=0.25" in results["config"]["model_args"]
    assert results["throughput"]["avg_visual_tokens_kept"] == 9
    assert results["throughput"]["avg_visual_tokens_total"] == 36
    assert [s["doc_id"] for s in samples["fopru_shapes_gen"]] == list(range(8))
    processor = AutoProcessor.from_pretrained(tiny_llava)
    for sample in samples["fopru_shapes_gen"]:
        [counts] = sample["token_counts"]
        assert counts["visual_tokens_kept"] == 9 and counts["visual_tokens_total"] == 36
        # The LLM saw the unpruned prompt less the 27 placeholders of pruned tokens.
        prompt = processor.apply_chat_template(
            user_turn(sample["input"], [IMAGE]), add_generation_prompt=True, tokenize=False
        )
        unpruned = processor(images=[IMAGE], text=prompt)["input_ids"][0]
        assert counts["input_tokens"] == len(unpruned) - 27
        assert counts["output_tokens"] >= 1


def test_multiple_choice_runs_through_the_simple_class(tiny_llava: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    model_args = f"pretrained={tiny_llava},strategy=row,keep_ratio=0.5"
    run = lmms_eval(["--model", "llava_fopru", "--force_simple", "--model_args", model_args, "--tasks",
                     "fopru_shapes_mc", "--batch_size", "4", "--limit", "6", "--device", "cpu"], output)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    results, samples = results_of(output)
    assert 0.0 <= results["results"]["fopru_shapes_mc"]["acc,none"] <= 1.0
    for sample in samples["fopru_shapes_mc"]:
        # One (loss, is_greedy) per option: 3 shapes or 4 colours; lmms-eval's scorer picks the smallest loss.
        assert len(sample["filtered_resps"]) == len(sample["token_counts"]) in (3, 4)
        losses = [float(loss) for loss, _ in sample["filtered_resps"]]
        assert all(loss > 0 for loss in losses)
        assert sample["acc"] == float(losses.index(min(losses)) == int(sample["target"]))
        assert all(c["visual_tokens_kept"] == 18 and c["visual_tokens_total"] == 36 for c in sample["token_counts"])


def test_a_cached_rerun_gives_the_first_runs_results(tiny_llava: Path, tmp_path: Path) -> None:
    """lmms-eval's --use_cache with a generation and a loglikelihood task: the first run writes the cache, the rerun
    serves generation from it (loglikelihood answers are never cached: ``LoglikelihoodAnswer``), and both give the
    same samples and scores."""
    model_args = f"pretrained={tiny_llava},strategy=rank,keep_ratio=0.5"
    runs = []
    for name in ("first", "rerun"):
        output = tmp_path / name
        run = lmms_eval(["--model", "llava_fopru", "--force_simple", "--model_args", model_args, "--tasks",
                         "fopru_shapes_gen,fopru_shapes_mc", "--batch_size", "2", "--limit", "4", "--device", "cpu",
                         "--use_cache", str(tmp_path / "cache")], output)  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        runs.append((run, *results_of(output)))
    (first, first_results, first_samples), (rerun, rerun_results, rerun_samples) = runs
    assert "cache hits" in rerun.stdout + rerun.stderr and "cache hits" not in first.stdout + first.stderr
    for task in ("fopru_shapes_gen", "fopru_shapes_mc"):
        assert len(first_samples[task]) == 4
        responses = [s["filtered_resps"] for s in first_samples[task]]
        assert responses == [s["filtered_resps"] for s in rerun_samples[task]]
        assert first_results["results"][task] == rerun_results["results"][task]
    losses = [float(loss) for sample in first_samples["fopru_shapes_mc"] for loss, _ in sample["filtered_resps"]]
    assert all(loss > 0 for loss in losses)


def test_a_failing_sample_fails_the_run_visibly_and_writes_no_results(tiny_llava: Path, tmp_path: Path) -> None:
    """lmms-eval's CLI exits 0 even when evaluation raises; the failure must still show and leave no results."""
    task_dir = broken_task(tmp_path)
    output = tmp_path / "out"
    model_args = f"pretrained={tiny_llava},strategy=rank,keep_ratio=0.5"
    args = [
        "--model",
        "llava_fopru",
        "--model_args",
        model_args,
        "--tasks",
        "fopru_broken",
        "--limit",
        "2",
        "--device",
        "cpu",
    ]
    run = lmms_eval(args, output, include=task_dir)
    log = run.stdout + run.stderr
    assert "llava_fopru: generation failed for fopru_broken/test/0" in log
    assert not list(output.glob("**/*_results.json"))
    assert not list(output.glob("**/*_samples_*.jsonl"))


# The peer methods too (VisionZip's merges, FastV's drop inside the LLM, whose tiny LLM has 2 layers).
@pytest.mark.parametrize("strategy", ["rank", "random", "visionzip", "vispruner", "divprune", "fastv,llm_layer=1"])
def test_two_processes_give_the_single_process_results(tiny_llava: Path, tmp_path: Path, strategy: str) -> None:
    """torchrun on the CPU is accelerate's MULTI_CPU: each rank scores its share; gathered results must match (the
    peer methods too: VisionZip's merges and FastV's in-LLM drop included)."""
    args = ["--model", "llava_fopru", "--model_args", f"pretrained={tiny_llava},strategy={strategy},keep_ratio=0.25",
            "--tasks", "fopru_shapes_gen", "--batch_size", "2", "--limit", "7", "--device", "cpu"]  # fmt: skip
    single = lmms_eval(args, tmp_path / "single")
    double = lmms_eval(args, tmp_path / "double", processes=2)
    assert single.returncode == 0 and double.returncode == 0, double.stdout[-3000:] + double.stderr[-3000:]
    assert "terminate called" not in double.stderr
    log = double.stdout + double.stderr
    assert "llava_fopru: rank 0 of 2 on cpu" in log and "llava_fopru: rank 1 of 2 on cpu" in log
    (single_results, single_samples), (double_results, double_samples) = (
        results_of(tmp_path / "single"),
        results_of(tmp_path / "double"),
    )
    assert double_results["results"] == single_results["results"]
    # The kept-token statistics are per request, summed over both processes: 9 of 36 for every doc, as with one.
    statistics = ("avg_visual_tokens_kept", "avg_visual_tokens_total", "avg_visual_keep_fraction")
    for results in (single_results, double_results):
        assert [results["throughput"][key] for key in statistics] == [9, 36, 0.25]
    keys = ("doc_id", "filtered_resps", "token_counts", "exact_match")
    assert [{k: s[k] for k in keys} for s in double_samples["fopru_shapes_gen"]] == [
        {k: s[k] for k in keys} for s in single_samples["fopru_shapes_gen"]
    ]


@pytest.mark.parametrize("model", ["llava_fopru", "llava_next_fopru", "qwen2_vl_fopru", "qwen2_5_vl_fopru"])
def test_make_random_saves_a_checkpoint_the_adapter_accepts(model: str, tmp_path: Path) -> None:
    from lmms_eval.models import get_model
    from transformers import AutoConfig

    from fopru_eval.tools.cli import main

    assert main(["make-random", model, str(tmp_path / "checkpoint")]) == 0
    family = get_model(model).family_class
    family.check_checkpoint(str(tmp_path / "checkpoint"), model)  # raises if it is not the family's
    assert AutoConfig.from_pretrained(tmp_path / "checkpoint").model_type == family.model_type

"""``fopru-eval sweep`` end to end on a tiny checkpoint and the offline tasks, with W&B offline; and its parts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, TASKS_DIR, broken_task, offline_runs, read_offline_run, read_table
from fopru_eval.tools import cli
from fopru_eval.tools.curves import REFERENCE, curves_from_rows, write_pngs
from fopru_eval.tools.sweep import SweepError, needs_simple_class, plan_points, visual_token_stats

BIN = Path(sys.executable).parent
# The tiny checkpoint's images are 6 x 6 = 36 visual tokens: rank keeps floor(36 r), row floor(6 r) rows of 6.
KEPT = {"none@1": 36, "rank@0.5": 18, "rank@0.25": 9, "row@0.5": 18, "row@0.25": 6, "random@0.5": 18, "random@0.25": 9}


def fopru_eval(args: list[str], cwd: Path, launcher: list[str] | None = None, env: dict | None = None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
           "OMP_NUM_THREADS": "1", **(env or {})}  # fmt: skip
    command = (launcher or [str(BIN / "fopru-eval")]) + args
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=cwd)


# ----- parts ------------------------------------------------------------------------------------------------------


def test_points_put_the_unpruned_reference_first_and_carry_the_fixed_pruning_args() -> None:
    points = plan_points(["rank", "row"], [0.25, 1.0, 0.5], "pretrained=x,significance=column,seed=3")
    assert [p.label for p in points] == ["none@1", "rank@0.5", "rank@0.25", "row@0.5", "row@0.25"]
    assert all(p.config.significance == "column" and p.config.seed == 3 for p in points)
    assert points[2].model_args("pretrained=x,significance=column,seed=3") == (
        "pretrained=x,significance=column,seed=3,strategy=rank,keep_ratio=0.25"
    )
    assert points[0].model_args("") == "strategy=none"
    # Ratio 1 is strategy none for every strategy, so it is one point, not one per strategy.
    assert [p.label for p in plan_points(["random"], [1.0], "")] == ["none@1"]
    assert [p.label for p in plan_points(["none", "rank"], [0.5], "")] == ["none@1", "rank@0.5"]
    with pytest.raises(SweepError, match="keep_ratio, strategy"):
        plan_points(["rank"], [0.5], "pretrained=x,strategy=rank,keep_ratio=0.5")


def test_a_methods_own_settings_go_to_its_points_only() -> None:
    """``contextual_ratio`` in --model_args reaches VisionZip's points and not FoPru's (where it would be refused);
    a setting no swept method takes is refused; CLS-defined and in-LLM methods are not multiplied by scorers."""
    points = plan_points(
        ["rank", "visionzip", "fastv"], [0.5], "pretrained=x,contextual_ratio=0.25", scores=["logits", "softmax"]
    )
    by_label = {point.label: point.config for point in points}
    assert by_label["visionzip+logits@0.5"].option_values == {"contextual_ratio": 0.25}
    assert by_label["rank+logits@0.5"].option_values == {}
    assert [label for label in by_label if label.startswith("fastv")] == ["fastv@0.5"]
    with pytest.raises(SweepError, match="sets important_ratio, which none of --strategies takes"):
        plan_points(["rank", "visionzip"], [0.5], "pretrained=x,important_ratio=0.25")


def test_a_bad_request_fails_before_any_weights_load(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    common = ["sweep", "--tasks", "fopru_shapes_gen", "--output_path", str(tmp_path)]
    assert cli.main([*common, "--model_args", "pretrained=/nonexistent,keep_tokens=8"]) == 2
    assert "keep_tokens, which the sweep varies itself" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([*common, "--model_args", "pretrained=/nonexistent", "--keep-ratios", "0.5,0"])
    with pytest.raises(SystemExit):
        cli.main([*common, "--model_args", "pretrained=/nonexistent", "--strategies", "rank,sparsevlm"])
    assert cli.main([*common, "--model_args", "pretrained=/nonexistent", "--wandb_args", "project=p,projetc=q"]) == 2
    assert "--wandb_args: wandb.init takes no ['projetc']; accepted: " in capsys.readouterr().err
    wandb_args = ["--wandb_args", "project=p,name=a", "--wandb-project", "q"]
    assert cli.main([*common, "--model_args", "pretrained=/nonexistent", *wandb_args]) == 2
    assert "--wandb-project=q and --wandb_args project=p disagree" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_mean_visual_tokens_count_each_doc_once_and_groups_over_their_subtasks() -> None:
    option = {"visual_tokens_kept": 9, "visual_tokens_total": 36, "prefill_flops": 100}
    samples = {
        "mc": [{"token_counts": [option, option, option]}, {"token_counts": [option] * 4}],  # one entry per option
        "gen": [{"token_counts": [{"visual_tokens_kept": 18, "visual_tokens_total": 36, "prefill_flops": 200}]}],
    }
    stats = visual_token_stats(samples, {"both": ["mc", "gen"], "mc": [], "gen": []})
    # Visual tokens: each doc once; FLOPs: every option's prefill (3 and 4 of them).
    assert stats["tasks"]["mc"] == {
        "docs": 2, "visual_tokens_kept_mean": 9, "visual_tokens_total_mean": 36, "visual_keep_fraction": 0.25,
        "prefill_flops_mean": 350,
    }  # fmt: skip
    assert stats["tasks"]["both"]["visual_tokens_kept_mean"] == stats["overall"]["visual_tokens_kept_mean"] == 12


def test_the_simple_class_is_picked_only_when_a_task_needs_loglikelihood() -> None:
    assert not needs_simple_class({"a": {"output_type": "generate_until"}})
    assert needs_simple_class({"a": {"output_type": "generate_until"}, "b": {"output_type": "multiple_choice"}})


def test_curves_have_one_line_per_strategy_and_the_unpruned_reference(tmp_path: Path) -> None:
    total = {"visual_tokens_total_mean": 36}
    rows = [
        {"strategy": "none", "t/visual_tokens_kept_mean": 36, "t/acc": 0.8, "t/acc_stderr": 0.05, **total},
        {"strategy": "rank", "t/visual_tokens_kept_mean": 9, "t/acc": 0.6, "t/acc_stderr": 0.06, **total},
        {"strategy": "rank", "t/visual_tokens_kept_mean": 18, "t/acc": 0.7, **total},
        {"strategy": "row", "t/visual_tokens_kept_mean": 18, "t/acc": 0.5, **total},
    ]
    [curve] = curves_from_rows(rows)  # the stderr column is no curve of its own
    assert (curve.task, curve.metric, curve.total_tokens) == ("t", "acc", 36)
    assert curve.lines == {"rank": [(9, 0.6), (18, 0.7)], "row": [(18, 0.5)]}
    assert curve.reference == (36, 0.8)
    assert curve.stderr == {(36, 0.8): 0.05, (9, 0.6): 0.06}
    [png] = write_pngs([curve], tmp_path, model="llava_fopru: some/checkpoint")
    assert png == tmp_path / "curves_t.png" and png.read_bytes().startswith(b"\x89PNG")


# ----- end to end -------------------------------------------------------------------------------------------------


def test_sweep_evaluates_every_point_on_one_model_and_logs_a_wandb_group(tiny_llava: Path, tmp_path: Path) -> None:
    """Multiple choice picks the simple class by itself; the submission task writes its file into each point."""
    run = fopru_eval(["sweep", "--model_args", f"pretrained={tiny_llava}", "--tasks",
                      "fopru_shapes_mc,fopru_shapes_submit", "--strategies", "rank,row,random", "--keep-ratios",
                      "1,0.5,0.25", "--limit", "3", "--batch_size", "2", "--device", "cpu", "--include_path",
                      str(TASKS_DIR), "--output_path", "out", "--wandb-project", "fopru-test"], tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    output = tmp_path / "out"
    # The model loaded once: one load, seven evaluations.
    assert run.stderr.count("llava_fopru: pruning") == 1

    summary = json.loads((output / "summary.json").read_text())
    assert summary["model_class"] == "simple"
    flops = {}
    assert [row["label"] for row in summary["points"]] == list(KEPT)
    for label, kept in KEPT.items():
        results = json.loads((output / label / "results.json").read_text())
        strategy, ratio = label.split("@")
        assert results["fopru"]["pruning"]["strategy"] == strategy
        assert results["fopru"]["pruning"]["keep_ratio"] == (None if strategy == "none" else float(ratio))
        overall = results["fopru"]["visual_tokens"]["overall"]
        assert overall == {
            "docs": 6, "visual_tokens_kept_mean": kept, "visual_tokens_total_mean": 36,
            "visual_keep_fraction": kept / 36, "prefill_flops_mean": overall["prefill_flops_mean"],
        }  # fmt: skip
        flops[label] = overall["prefill_flops_mean"]
        assert results["config"]["model"] == "llava_fopru"
        expected_args = f"pretrained={tiny_llava},strategy={strategy}" + ("" if strategy == "none" else
                                                                          f",keep_ratio={ratio}")  # fmt: skip
        assert results["config"]["model_args"] == expected_args
        assert set(results["results"]) == {"fopru_shapes_mc", "fopru_shapes_submit"}
        for task in ("fopru_shapes_mc", "fopru_shapes_submit"):
            samples = [json.loads(line) for line in (output / label / f"samples_{task}.jsonl").read_text().splitlines()]
            assert [s["doc_id"] for s in samples] == [0, 1, 2]
            assert all(c["visual_tokens_kept"] == kept for s in samples for c in s["token_counts"])
        # The task's own harness wrote the submission into this point's folder: every doc, as scored.
        submission = json.loads((output / label / "submissions" / "fopru_shapes_submission.json").read_text())
        assert submission == [s["submission"] for s in samples]
    # Fewer tokens fed, fewer prefill FLOPs; the same tokens, the same FLOPs.
    assert flops["rank@0.25"] == flops["random@0.25"] < flops["row@0.5"] == flops["rank@0.5"] < flops["none@1"]
    csv_lines = (output / "summary.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + len(KEPT) and "fopru_shapes_mc/acc" in csv_lines[0]
    assert {p.name for p in output.glob("*.png")} == {"curves_fopru_shapes_mc.png", "curves_fopru_shapes_submit.png"}

    # W&B: one run per point, filled by lmms-eval's own logger, and one with the curves, all in one group.
    runs = {run.name: (run, run_dir) for run_dir in offline_runs(tmp_path) for run in [read_offline_run(run_dir)]}
    [group] = {run.group for run, _ in runs.values()}
    assert group.startswith("fopru-sweep-")
    assert set(runs) == {f"{group}:{label}" for label in [*KEPT, "curves"]}
    for row in summary["points"]:
        run, _ = runs[f"{group}:{row['label']}"]
        assert run.job_type == "fopru-point"
        assert run.config["model"] == "llava_fopru" and run.config["pretrained"] == str(tiny_llava)
        assert run.config["strategy"] == run.config["fopru"]["strategy"] == row["strategy"]
        # lmms-eval's WandbLogger: task and CLI configs, its results artifact, its metrics; ours on top.
        assert set(run.config["task_configs"]) == {"fopru_shapes_mc", "fopru_shapes_submit"}
        assert f"strategy={row['strategy']}" in run.config["cli_configs"]["model_args"]
        assert ("results", "eval_results") in run.artifacts
        assert run.summary["fopru_shapes_mc/acc"] == row["fopru_shapes_mc/acc"]
        assert run.summary["visual_tokens_kept_mean"] == KEPT[row["label"]]
    curves_run, curves_dir = runs[f"{group}:curves"]
    assert curves_run.job_type == "fopru-sweep" and curves_run.config["keep_ratios"] == [1.0, 0.5, 0.25]
    assert curves_run.summary["points"] == len(KEPT)
    table = read_table(curves_dir, "points")
    assert [(row["label"], row["visual_tokens_kept_mean"]) for row in table] == list(KEPT.items())
    assert [row["fopru_shapes_mc/acc"] for row in table] == [row["fopru_shapes_mc/acc"] for row in summary["points"]]
    plot = read_table(curves_dir, "curves/fopru_shapes_mc/acc_table")
    unpruned = summary["points"][0]["fopru_shapes_mc/acc"]
    assert {row["strategy"] for row in plot} == {"rank", "row", "random", REFERENCE}
    assert [(r["visual_tokens_kept_mean"], r["acc"]) for r in plot if r["strategy"] == REFERENCE] == [
        (6, unpruned),
        (36, unpruned),
    ]
    assert [r["visual_tokens_kept_mean"] for r in plot if r["strategy"] == "row"] == [6, 18]


def test_two_process_sweep_logs_each_point_once_and_gathers_every_doc(tiny_llava: Path, tmp_path: Path) -> None:
    """torchrun on the CPU: both ranks evaluate, only rank 0 writes files and W&B."""
    launcher = [str(BIN / "torchrun"), "--nproc_per_node=2", "--master_port=29521", "-m", "fopru_eval.tools.cli"]
    run = fopru_eval(["sweep", "--model_args", f"pretrained={tiny_llava}", "--tasks", "fopru_shapes_gen",
                      "--strategies", "rank", "--keep-ratios", "1,0.5", "--limit", "5", "--device", "cpu",
                      "--include_path", str(TASKS_DIR), "--output_path", "out", "--wandb-project", "fopru-test"],
                     tmp_path, launcher=launcher)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    runs = {read_offline_run(run_dir).name.rsplit(":", 1)[1]: run_dir for run_dir in offline_runs(tmp_path)}
    assert sorted(runs) == ["curves", "none@1", "rank@0.5"]
    for label, kept in (("none@1", 36), ("rank@0.5", 18)):
        lines = (tmp_path / "out" / label / "samples_fopru_shapes_gen.jsonl").read_text().splitlines()
        samples = [json.loads(line) for line in lines]
        assert sorted(s["doc_id"] for s in samples) == [0, 1, 2, 3, 4]
        assert all(s["token_counts"][0]["visual_tokens_kept"] == kept for s in samples)
    assert [r["label"] for r in read_table(runs["curves"], "points")] == ["none@1", "rank@0.5"]


def test_the_sweep_config_runs_as_a_wandb_agent_run(tiny_llava: Path, tmp_path: Path) -> None:
    """One grid point of sweeps/llava_fopru.yaml, its command built by wandb's own agent code: the run logs the
    summary fields W&B's UI plots across runs."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils
    from wandb.sdk.lib import config_util

    config = sweep_utils.load_sweep_config(str(REPO / "sweeps" / "llava_fopru.yaml"))
    assert config["method"] == "grid"
    assert config["parameters"]["strategy"]["values"] == ["rank", "row", "rank+cls", "random", "uniform"]
    assert config["parameters"]["keep_tokens"]["values"] == [192, 128, 64]  # peers' budgets of LLaVA-1.5's 576

    # What `wandb agent` does for one run (wandb/wandb_agent.py, Agent._command_run), with the model and the
    # benchmarks swapped for the tiny ones (36 tokens per image: 4 whole rows of 6 fit 24 tokens).
    args = {"strategy": {"value": "row"}, "keep_tokens": {"value": 24}}
    param_path = tmp_path / "wandb" / "sweep-test" / "config-agentrun1.yaml"
    config_util.save_config_file_from_dict(str(param_path), args)
    variables = sweep_utils.create_sweep_command_args({"args": args})
    variables["env"] = ["/usr/bin/env"]
    swaps = {"--model_args=": f"--model_args=pretrained={tiny_llava}", "--tasks=": "--tasks=fopru_shapes_gen"}
    command = []
    for item in sweep_utils.create_sweep_command(config["command"]):
        if item.startswith("${"):
            command += variables[item[2:-1]]
        else:
            command.append(next((new for old, new in swaps.items() if item.startswith(old)), item))
    command[command.index("fopru-eval")] = str(BIN / "fopru-eval")
    command += ["--limit=3", "--device=cpu", f"--include_path={TASKS_DIR}"]

    env = {"WANDB_SWEEP_ID": "test", "WANDB_RUN_ID": "agentrun1", "WANDB_SWEEP_PARAM_PATH": str(param_path)}
    run = fopru_eval(command[1:], tmp_path, launcher=command[:1], env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    [run_dir] = offline_runs(tmp_path)
    assert run_dir.name.endswith("-agentrun1")
    agent_run = read_offline_run(run_dir)
    assert (agent_run.config["strategy"], agent_run.config["keep_tokens"]) == ("row", 24)
    assert agent_run.summary["visual_tokens_kept_mean"] == 24 and agent_run.summary["keep_tokens"] == 24
    assert 0 <= agent_run.summary["fopru_shapes_gen/exact_match"] <= 1
    assert ("results", "eval_results") in agent_run.artifacts
    # Agent runs share one command line; each writes under its own run id.
    results = json.loads((tmp_path / "fopru-sweep/llava-1.5-7b/agentrun1/row@24tok/results.json").read_text())
    assert results["fopru"]["pruning"]["keep_tokens"] == 24


def test_a_failing_sample_fails_the_sweep_with_a_nonzero_exit(tiny_llava: Path, tmp_path: Path) -> None:
    """Unlike lmms-eval's CLI, which exits 0 when evaluation raises."""
    task_dir = broken_task(tmp_path)
    run = fopru_eval(["sweep", "--model_args", f"pretrained={tiny_llava}", "--tasks", "fopru_broken", "--include_path",
                      str(task_dir), "--strategies", "rank", "--keep-ratios", "0.5", "--limit", "2", "--device",
                      "cpu", "--output_path", "out"], tmp_path)  # fmt: skip
    assert run.returncode != 0
    assert "llava_fopru: generation failed for fopru_broken/test/0" in run.stderr
    assert not (tmp_path / "out" / "summary.json").exists()


def test_an_interrupted_sweep_resumes_to_the_same_summary_and_another_sweep_is_refused(
    tiny_llava: Path, tmp_path: Path
) -> None:
    common = ["sweep", "--tasks", "fopru_shapes_gen", "--strategies", "rank", "--keep-ratios", "1,0.5,0.25",
              "--limit", "3", "--device", "cpu", "--include_path", str(TASKS_DIR)]  # fmt: skip
    whole = fopru_eval([*common, "--model_args", f"pretrained={tiny_llava}", "--output_path", "whole"], tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    # Interrupted during the last point: its results.json (written last) and the summary are missing.
    shutil.copytree(tmp_path / "whole", tmp_path / "part")
    for name in ("rank@0.25/results.json", "summary.json", "summary.csv"):
        (tmp_path / "part" / name).unlink()
    resumed = fopru_eval([*common, "--model_args", f"pretrained={tiny_llava}", "--output_path", "part"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reused = [line.split(" pruning ")[1].split(":")[0] for line in resumed.stdout.splitlines() if "earlier run" in line]
    assert reused == ["none@1", "rank@0.5"]
    for name in ("summary.json", "summary.csv", "rank@0.25/samples_fopru_shapes_gen.jsonl"):
        assert (tmp_path / "part" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    # Another sweep (here another seed) into the same folder would mix points: refused before the model loads.
    other = fopru_eval([*common, "--model_args", f"pretrained={tiny_llava},seed=1", "--output_path", "part"], tmp_path)
    assert other.returncode == 2
    assert "holds the points of another sweep (model_args: " in other.stderr

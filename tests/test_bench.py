"""Smoke tests of ``fopru-eval bench`` on each family's tiny random model: every row and figure is there and sane.

Timings are never compared with each other: speed depends on the machine, so speed claims stay out of tests.
"""

import json
import math
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

CONFIGS = ["none", "rank@1", "rank@0.5", "rank@0.25", "rank@0.11", "row@1", "row@0.5", "row@0.25", "row@0.11"]
TIMES = ["prefill_s", "llm_prefill_s", "end_to_end_s", "ideal_prefill_s", "ideal_end_to_end_s"]
RATIOS = ["prefill_vs_none", "llm_prefill_vs_none", "end_to_end_vs_none"]
IDEAL_RATIOS = ["prefill_vs_ideal", "end_to_end_vs_ideal"]


def run_bench(tmp_path, capsys, model: str, *extra: str) -> tuple[dict, str]:
    from fopru_eval.tools.cli import main

    output = tmp_path / "bench.json"
    argv = ["bench", "--model", model, "--size", "tiny", "--samples", "2", "--max-new-tokens", "2", "--repeats", "1"]
    assert main([*argv, "--no-full-tower", *extra, "--output", str(output)]) == 0
    return json.loads(output.read_text()), capsys.readouterr().out


def check_every_row_and_figure(result: dict, printed: str, model: str, tokens: int, reference: str) -> dict:
    """What every family's bench result must hold: each config's row with sane figures and the adapter's token
    counts, the significance cost, and strategy=none answering exactly as lmms-eval's own adapter. Returns the rows
    by config name."""
    rows = {row["config"]: row for row in result["sweep"]}
    assert list(rows) == CONFIGS
    for name, row in rows.items():
        assert f"| {name} |" in printed
        for key in [*TIMES, *RATIOS, *IDEAL_RATIOS, "visual_tokens_kept", "output_tokens"]:
            assert math.isfinite(row[key]) and row[key] > 0, (name, key, row[key])
        # Decode time per token is a difference of two timings: where busy cores make it come out at or below zero, it
        # is reported as unknown, never as a negative time.
        assert row["decode_per_token_s"] is None or row["decode_per_token_s"] > 0
        # A tiny model's working set may fit in memory the process already holds: zero is a fair reading.
        assert math.isfinite(row["peak_memory_mib"]) and row["peak_memory_mib"] >= 0
        assert row["visual_tokens_total"] == tokens
    # Counts come from the adapter: rank keeps floor(N * r) of each view (LLaVA-NeXT has two views per image).
    assert rows["none"]["visual_tokens_kept"] == rows["rank@1"]["visual_tokens_kept"] == tokens
    assert rows["rank@0.5"]["visual_tokens_kept"] == tokens // 2

    significance = result["significance"]
    for key in ["tower_s", "significance_s", "share", "tower_with_significance_s"]:
        assert math.isfinite(significance[key]) and significance[key] > 0
    assert math.isfinite(significance["overhead"])

    compare = result["reference"]
    assert compare["reference"] == reference
    assert "skipped" not in compare, compare.get("skipped")
    for key in ["ours_end_to_end_s", "reference_end_to_end_s", "ours_vs_reference", "ours_batched_end_to_end_s"]:
        assert math.isfinite(compare[key]) and compare[key] > 0
    # strategy=none must answer exactly as lmms-eval's own adapter, sample for sample, and batching must not change an
    # answer (the comparison runs a whole batch of 8: more docs than the sweep's 2).
    assert compare["reference_failed"] == 0
    assert compare["identical_answers"] == compare["samples"] == 8
    assert compare["throughput_batch"] == 8
    # In float32 padding changes no answer (the family tests check batch 8 == batch 1 exactly); in bfloat16 (the Qwen
    # defaults) a padded batch rounds differently, so there the count is the finding, not a test.
    if result["model"]["dtype"] == "float32":
        assert compare["identical_batched_answers"] == 8
    assert 0 <= compare["identical_batched_answers"] <= 8
    assert f"| {model} | 1 |" in printed and f"| {model} | 8 |" in printed
    return rows


def test_bench_tiny_reports_every_row_and_column(tmp_path, capsys):
    result, printed = run_bench(tmp_path, capsys, "llava_fopru")

    assert result["machine"]["torch_threads"] >= 1
    assert result["model"]["visual_tokens_per_image"] == 36
    assert result["settings"] == {
        "samples": 2,
        "batch_size": 1,
        "max_new_tokens": 2,
        "repeats": 1,
        "warmup": 1,
        "ratios": [1.0, 0.5, 0.25, 0.11],
        "strategies": ["rank", "row"],
        "throughput_batch": 8,
        "end_to_end": True,
    }

    rows = check_every_row_and_figure(result, printed, "llava_fopru", tokens=36, reference="llava_hf")
    assert rows["row@0.5"]["visual_tokens_kept"] == 18  # 3 of the 6 rows of the 6 x 6 grid
    for key in RATIOS:
        assert rows["none"][key] == 1.0
    assert "significance cost" in printed
    assert "| lmms-eval llava_hf |" in printed


# Per family: visual tokens per image at tiny size (LLaVA-NeXT: the base view's 36 and the 12 x 12 unpadded mosaic of
# its 2 x 2 crops; Qwen: 8 x 8 patches, merged 2 x 2), and lmms-eval's adapter it is compared with.
FAMILIES = {
    "llava_next_fopru": (180, "llava_hf"),
    "qwen2_vl_fopru": (16, "qwen2_vl"),
    "qwen2_5_vl_fopru": (16, "qwen2_5_vl"),
    # The base view's 36 and the mosaic of 6 x 6 crops, unpadded and interpolated down (anyres_max_9) to 18 x 18.
    "llava_onevision_fopru": (360, "llava_hf"),
    # lmms-eval's chat qwen3_vl applies qwen-vl-utils' own pixel limits to images: 320 x 320, 10 x 10 merged tokens.
    "qwen3_vl_fopru": (100, "qwen3_vl"),
}


@pytest.mark.parametrize("model", list(FAMILIES))
def test_bench_runs_every_family(tmp_path, capsys, model):
    result, printed = run_bench(tmp_path, capsys, model, "--warmup", "0")  # no timing is checked: save the time
    tokens, reference = FAMILIES[model]
    assert result["model"]["adapter"] == model
    assert result["model"]["visual_tokens_per_image"] == tokens

    rows = check_every_row_and_figure(result, printed, model, tokens, reference)
    assert rows["rank@0.11"]["visual_tokens_kept"] < rows["rank@0.25"]["visual_tokens_kept"] < tokens // 2
    assert "| none | " in printed and "x ideal" in printed
    assert "significance_full_tower" not in result


def shrink(config, vision: dict, text: dict):
    """A published config at a few widths, for wiring tests: same image geometry, same depth, tiny matrices."""
    for name, value in vision.items():
        setattr(config.vision_config, name, value)
    for name, value in text.items():
        setattr(config.text_config, name, value)
    return config


def test_full_size_on_the_cpu_scales_a_slice_of_the_llm_to_its_full_depth(tmp_path, monkeypatch, capsys):
    """`bench --full-size` on a CPU: the whole tower and one of the LLM's 32 decoder layers (at a few widths here, so
    it runs in seconds), its prefill scaled to 32 layers, and the scaling checked against a 2-layer build."""
    from fopru_eval.tools.bench import models
    from fopru_eval.tools.checkpoints.full_size import full_size_config
    from fopru_eval.tools.cli import main

    text = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "num_key_value_heads": 2}
    built = []

    def shrunk(family, llm_layers=None):
        built.append(llm_layers)
        return shrink(full_size_config(family, llm_layers), SHRUNK_TOWERS["llava_fopru"], text)

    monkeypatch.setattr(models, "full_size_config", shrunk)
    output = tmp_path / "bench.json"
    argv = ["bench", "--model", "llava_fopru", "--full-size", "--device", "cpu", "--llm-layers", "1", "--samples", "1",
            "--repeats", "1", "--warmup", "0", "--max-new-tokens", "1", "--strategies", "rank"]  # fmt: skip
    assert main([*argv, "--output", str(output)]) == 0
    result, printed = json.loads(output.read_text()), capsys.readouterr().out
    assert (result["model"]["text_layers"], result["model"]["llm_layers_full"]) == (1, 32)
    assert 1 in built and 2 in built  # the slice, and the deeper build of the check
    rows = {row["config"]: row for row in result["sweep"]}
    # Peers' budgets: 192, 128 and 64 of LLaVA-1.5's 576 tokens.
    assert [row["visual_tokens_kept"] for row in rows.values()] == [576, 192, 128, 64]
    for row in rows.values():
        assert row["full_prefill_s"] == pytest.approx(row["prefill_s"] + 31 * row["llm_layers_s"])
        # Whole generations are not timed at full size on a CPU: reported as unknown, never as a made-up time.
        assert row["end_to_end_s"] is row["decode_per_token_s"] is row["end_to_end_vs_ideal"] is None
        assert 0 < row["llm_layers_s"] < row["llm_prefill_s"]
    flops = [row["flops_vs_none"] for row in rows.values()]
    assert flops[0] == 1 and flops == sorted(flops, reverse=True) and flops[-1] < 1
    check = result["depth_check"]
    assert (check["slice_layers"], check["deeper_layers"]) == (1, 2)
    assert math.isfinite(check["measured_vs_predicted"]) and check["measured_vs_predicted"] > 0
    assert "reference" not in result and "significance_full_tower" not in result  # its own tower is the published one
    assert "At full depth: only 1 of the LLM's 32 decoder layers were built" in printed and "Scaling check" in printed


def test_llm_layers_without_full_size_is_refused_before_anything_is_built(capsys):
    from fopru_eval.tools.cli import main

    assert main(["bench", "--model", "qwen2_vl_fopru", "--llm-layers", "2"]) == 2
    assert "--llm-layers needs --size full (got --size mid)" in capsys.readouterr().err
    assert main(["bench", "--model", "qwen3_vl_fopru", "--full-size"]) == 2
    assert "--size full has no published config for qwen3_vl_fopru; accepted: llava_fopru," in capsys.readouterr().err


# Shrunk stand-ins for the published configs, so the measurement's wiring runs in seconds: the tower class, the block
# or layer the adapter reads, the capture. (A full-size tower takes minutes per pass on this CPU.)
SHRUNK_TOWERS = {
    "llava_fopru": {"num_hidden_layers": 3, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2},
    "qwen2_vl_fopru": {"depth": 2, "embed_dim": 32, "num_heads": 2, "hidden_size": 64},
    "qwen2_5_vl_fopru": {
        "depth": 4, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
        "fullatt_block_indexes": [1, 3],
    },
}  # fmt: skip


@pytest.mark.parametrize("model", list(SHRUNK_TOWERS))
def test_significance_cost_on_the_published_tower_runs_its_capture(monkeypatch, model):
    import argparse

    from fopru_eval.families import hooks
    from fopru_eval.tools import bench
    from fopru_eval.tools.bench import runs
    from fopru_eval.tools.checkpoints.full_size import full_size_config

    def shrunk(family):
        return shrink(full_size_config(family), SHRUNK_TOWERS[model], {})

    monkeypatch.setattr(runs, "full_size_config", shrunk)
    family = bench.FAMILIES[model]
    captured = []
    capture_class = hooks.SignificanceCapture if model == "llava_fopru" else hooks.PackedSignificanceCapture
    leave = capture_class.__exit__

    def keep_and_leave(self, *exc_info):
        captured.append(self.significance)
        leave(self, *exc_info)

    monkeypatch.setattr(capture_class, "__exit__", keep_and_leave)

    cost = runs.significance_cost_full_tower(family, torch.device("cpu"), argparse.Namespace(warmup=0, repeats=1))
    assert cost["images"] == 2 and cost["tower"].startswith(family.full_size_tower)
    # Finite, positive figures; how large the share is is the bench's finding (one untimed-warmup round on a loaded
    # machine can put it anywhere), not something a test can assert.
    assert math.isfinite(cost["overhead"]) and cost["tower_s"] > 0 and cost["share"] > 0
    # Each capture (the pass with hooks, the pass timing them) saw both images, each scored per LLM token: 24 x 24
    # CLIP patches, or 16 x 16 merged Qwen groups.
    tokens = 576 if model == "llava_fopru" else 256
    assert len(captured) == 2 and all([len(scores) for scores in images] == [tokens, tokens] for images in captured)


def test_a_loaded_machine_is_marked_on_the_table() -> None:
    from fopru_eval.tools.bench.report import load_warning

    assert load_warning({"cpu_cores": 2, "load_average_1m": 1.5, "load_average_1m_end": 1.9}) == []
    [warning, _] = load_warning({"cpu_cores": 2, "load_average_1m": 0.4, "load_average_1m_end": 3.2})
    assert warning.startswith("**WARNING (!): load average 3.2 above the 2 cores")


def test_bench_reports_the_peer_methods_beside_fopru(tmp_path, capsys):
    """The peer methods get the same rows as FoPru: kept tokens, prefill x none and x ideal, FLOPs x none; FastV's
    FLOPs count its first layers at full length, so at the same budget they exceed a method that prunes before the
    LLM."""
    strategies = "rank,visionzip,vispruner,divprune,fastv"
    result, printed = run_bench(tmp_path, capsys, "llava_fopru", "--warmup", "0", "--no-compare", "--ratios", "0.25",
                                "--strategies", strategies, "--llm-layer", "1")  # fmt: skip
    rows = {row["config"]: row for row in result["sweep"]}
    assert list(rows) == ["none", *(f"{name}@0.25" for name in strategies.split(","))]
    for name, row in rows.items():
        assert f"| {name} |" in printed
        for key in ["prefill_vs_none", "prefill_vs_ideal", "flops_vs_none"]:
            assert math.isfinite(row[key]) and row[key] > 0, (name, key, row[key])
        if name != "none":
            assert row["visual_tokens_kept"] == 9 and row["flops_vs_none"] < 1
    before_the_llm = {rows[f"{name}@0.25"]["flops_vs_none"] for name in ("rank", "visionzip", "vispruner", "divprune")}
    assert len(before_the_llm) == 1  # the same tokens reach every layer, whichever they are
    assert rows["fastv@0.25"]["flops_vs_none"] > before_the_llm.pop()

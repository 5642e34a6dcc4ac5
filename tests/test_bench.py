"""Smoke test of ``fopru-eval bench`` on the tiny random LLaVA: every row and figure is there and sane.

Timings are never compared with each other: speed depends on the machine, so speed claims stay out of tests.
"""

import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

CONFIGS = ["none", "rank@1", "rank@0.5", "rank@0.25", "rank@0.11", "row@1", "row@0.5", "row@0.25", "row@0.11"]
TIMES = ["prefill_s", "llm_prefill_s", "end_to_end_s", "ideal_prefill_s", "ideal_end_to_end_s", "decode_per_token_s"]
RATIOS = ["prefill_vs_none", "llm_prefill_vs_none", "end_to_end_vs_none"]
IDEAL_RATIOS = ["prefill_vs_ideal", "end_to_end_vs_ideal"]


def test_bench_tiny_reports_every_row_and_column(tmp_path, capsys):
    from fopru_eval.cli import main

    output = tmp_path / "bench.json"
    argv = ["bench", "--size", "tiny", "--samples", "2", "--max-new-tokens", "2", "--repeats", "1", "--no-clip-large"]
    assert main([*argv, "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(output.read_text())

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
    }

    rows = {row["config"]: row for row in result["sweep"]}
    assert list(rows) == CONFIGS
    for name, row in rows.items():
        assert f"| {name} |" in printed
        for key in [*TIMES, *RATIOS, *IDEAL_RATIOS, "visual_tokens_kept", "output_tokens"]:
            assert math.isfinite(row[key]) and row[key] > 0, (name, key, row[key])
        # A tiny model's working set may fit in memory the process already holds: zero is a fair reading.
        assert math.isfinite(row["peak_memory_mib"]) and row["peak_memory_mib"] >= 0
        assert row["visual_tokens_total"] == 36
    assert rows["none"]["visual_tokens_kept"] == rows["rank@1"]["visual_tokens_kept"] == 36
    assert rows["rank@0.5"]["visual_tokens_kept"] == 18
    assert rows["row@0.5"]["visual_tokens_kept"] == 18  # 3 of the 6 rows of the 6 x 6 grid
    for key in RATIOS:
        assert rows["none"][key] == 1.0

    significance = result["significance"]
    for key in ["tower_s", "tower_with_significance_s"]:
        assert math.isfinite(significance[key]) and significance[key] > 0
    assert math.isfinite(significance["overhead"])
    assert "significance cost" in printed

    compare = result["llava_hf"]
    for key in ["ours_end_to_end_s", "llava_hf_end_to_end_s", "ours_vs_llava_hf"]:
        assert math.isfinite(compare[key]) and compare[key] > 0
    # strategy=none must answer exactly as lmms-eval's own llava_hf, sample for sample.
    assert compare["llava_hf_failed"] == 0
    assert compare["identical_answers"] == compare["samples"] == 2
    assert "| lmms-eval llava_hf |" in printed and "| llava_fopru strategy=none |" in printed

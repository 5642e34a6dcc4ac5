"""tasks/fopru_paper names real lmms-eval 0.7.3 tasks: checked against lmms-eval's own task index, offline."""

from __future__ import annotations

import os
from pathlib import Path

import lmms_eval
import pytest
from lmms_eval.tasks import TaskManager

from conftest import TASKS_DIR
from fopru_eval.tools.sweep import leaf_task_configs, needs_simple_class, resolve_tasks

BUILT_IN = Path(lmms_eval.__file__).parent / "tasks"
PAPER = [
    "gqa", "mmbench_en_dev", "mme", "pope", "scienceqa_img", "textvqa_val", "ai2d", "seedbench", "mmmu_val",
    "vizwiz_vqa_val",
]  # fmt: skip


@pytest.fixture(scope="module")
def task_manager() -> TaskManager:
    # Indexing reads YAML only; nothing is downloaded until a task is loaded.
    return TaskManager(include_path=str(TASKS_DIR))


def test_every_member_of_fopru_paper_is_a_built_in_lmms_eval_task(task_manager: TaskManager) -> None:
    assert task_manager.task_index["fopru_paper"]["type"] == "group"
    leaves = leaf_task_configs(task_manager, resolve_tasks(task_manager, ["fopru_paper"]))
    assert list(leaves) == PAPER
    for name in PAPER:
        entry = task_manager.task_index[name]
        # Built in, not shadowed by a local task of the same name.
        assert entry["type"] == "task" and Path(entry["yaml_path"]).is_relative_to(BUILT_IN), name
        # The full config, includes resolved and the task's own functions imported: what lmms-eval will run.
        config = task_manager._get_config(name)
        assert config["task"] == name
        assert config["output_type"] == "generate_until", name
        assert config["dataset_path"].startswith("lmms-lab"), name
        assert callable(config["doc_to_visual"]) and callable(config["doc_to_text"]), name
        assert config["metric_list"], name
    # All generation: lmms-eval's default chat class answers the whole group.
    assert not needs_simple_class(leaves)


def test_the_local_tasks_resolve_beside_the_built_in_ones(task_manager: TaskManager) -> None:
    leaves = leaf_task_configs(task_manager, ["fopru_shapes", "fopru_shapes_submit"])
    assert list(leaves) == ["fopru_shapes_gen", "fopru_shapes_mc", "fopru_shapes_submit"]
    assert needs_simple_class(leaves)  # fopru_shapes_mc is multiple choice
    submit = task_manager._get_config("fopru_shapes_submit")
    # The include brings the shapes data and prompt; the metrics are the task's own, the submission among them.
    assert os.path.isfile(submit["dataset_kwargs"]["data_files"]["test"])
    assert [m["metric"] for m in submit["metric_list"]] == ["exact_match", "submission"]
    assert callable(submit["metric_list"][1]["aggregation"])

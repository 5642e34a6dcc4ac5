"""strategy=none is a drop-in for lmms-eval's own adapter of each family, answer for answer, on lmms-eval's real tasks
(their own configs, prompts, filters and scoring, over small generated docs with the hub datasets' schemas:
``lmms_tasks.py``): in the chat class (the default) and the simple class (--force_simple), on the checkpoint layout
transformers 5 writes and on the layout the hub stores the real checkpoint in (``hub_layout.py``).

One contract, parametrized over the families, layouts and classes. Each case's counts are checked against the
README's parity table; where lmms-eval's own adapter fails (``THEIRS_FAIL``), the case checks that it still does and
that ours answers every doc.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from lmms_tasks import IMAGE_TASKS, VIDEO_TASKS, doc_counts, evaluate, real_task_configs, recorded_inputs

from conftest import TASKS_DIR
from fopru_eval.tools.checkpoints.hub_layout import HUB_REPOS, save_as_hub
from fopru_eval.tools.checkpoints.llava import save_random_llava
from fopru_eval.tools.checkpoints.llava_next import save_random_llava_next
from fopru_eval.tools.checkpoints.llava_onevision import save_random_llava_onevision
from fopru_eval.tools.checkpoints.qwen3_vl import save_random_qwen3_vl
from fopru_eval.tools.checkpoints.qwen_vl import save_random_qwen_vl

# Besides lmms-eval's tasks: images in every mode real benchmarks hold (RGBA, LA, P with transparency, CMYK, I;16).
LOCAL_TASKS = ("fopru_shapes_modes",)


@dataclass(frozen=True)
class DropIn:
    """A family's FoPru adapter and the lmms-eval adapter it stands in for."""

    family: str  # the key of fopru_eval.tools.checkpoints.hub_layout.HUB_REPOS
    ours: str
    theirs: str
    save: Callable[[Path], Path]
    # Model args both adapters take (pixel limits that keep the tiny images small).
    shared_args: str = ""
    reads_videos: bool = False

    def task_groups(self) -> list[tuple[str, ...]]:
        """The tasks, in groups evaluated one call each (a failure of lmms-eval's adapter ends its call)."""
        return [(*IMAGE_TASKS, *LOCAL_TASKS), *([VIDEO_TASKS] if self.reads_videos else [])]


QWEN_PIXELS = "min_pixels=3136,max_pixels=12544"
DROP_INS = [
    DropIn("llava", "llava_fopru", "llava_hf", save_random_llava),
    DropIn("llava_next", "llava_next_fopru", "llava_hf", save_random_llava_next),
    DropIn("llava_onevision", "llava_onevision_fopru", "llava_hf", save_random_llava_onevision, reads_videos=True),
    DropIn("qwen2_vl", "qwen2_vl_fopru", "qwen2_vl", partial(save_random_qwen_vl, family="qwen2_vl"), QWEN_PIXELS),
    DropIn(
        "qwen2_5_vl", "qwen2_5_vl_fopru", "qwen2_5_vl", partial(save_random_qwen_vl, family="qwen2_5_vl"), QWEN_PIXELS
    ),
    # Video-MME's generated clips hold 6 frames; lmms-eval's chat qwen3_vl fails on a clip shorter than max_num_frames.
    DropIn(
        "qwen3_vl",
        "qwen3_vl_fopru",
        "qwen3_vl",
        save_random_qwen3_vl,
        "min_pixels=4096,max_pixels=16384,max_num_frames=4",
        reads_videos=True,
    ),
]
LAYOUTS = ("transformers", "hub")
# Few docs, short answers: what is compared is the prompts and images each side builds, and the data path after them.
DOCS, LIMIT, ANSWER = 2, 12, "max_new_tokens=8"
CLASSES = {"chat": False, "simple": True}

# Where lmms-eval's own adapter fails, by (family, layout, class, first task of the group): the error it raises and
# why. The README's table says so in these cells.
SIMPLE_LLAVA_HF_ON_JINJA = (
    ValueError,
    "lmms-eval's simple llava_hf renders its string prompt with the tokenizer's chat template, which a checkpoint "
    "saved by transformers 5 holds (chat_template.jinja) and which expects a list of content parts: the <image> "
    "markers are dropped and the processor refuses the image",
)
CHAT_LLAVA_HF_ON_VIDEOS = (
    IndexError,
    "lmms-eval's chat llava_hf hands a video-only doc's images=[] to the processor, which indexes images[0]",
)
THEIRS_FAIL: dict[tuple[str, str, str, str], tuple[type[Exception], str]] = {
    ("llava", "transformers", "simple", IMAGE_TASKS[0]): SIMPLE_LLAVA_HF_ON_JINJA,
    ("llava_next", "transformers", "simple", IMAGE_TASKS[0]): SIMPLE_LLAVA_HF_ON_JINJA,
    ("llava_onevision", "transformers", "chat", VIDEO_TASKS[0]): CHAT_LLAVA_HF_ON_VIDEOS,
    ("llava_onevision", "hub", "chat", VIDEO_TASKS[0]): CHAT_LLAVA_HF_ON_VIDEOS,
}


@pytest.fixture(scope="module")
def task_manager():
    from lmms_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR))  # reads every task's YAML: seconds, so only once


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Callable[[DropIn, str], Path]:
    """A tiny checkpoint of the family, in the layout transformers 5 writes or re-laid as the hub stores the real one;
    built once per module."""
    built: dict[tuple[str, str], Path] = {}

    def checkpoint(drop_in: DropIn, layout: str) -> Path:
        if (drop_in.family, layout) not in built:
            root = tmp_path_factory.mktemp(drop_in.family)
            path = drop_in.save(root / "transformers")
            built[drop_in.family, "transformers"] = path
            built[drop_in.family, "hub"] = save_as_hub(path, HUB_REPOS[drop_in.family], root / "hub")
        return built[drop_in.family, layout]

    return checkpoint


def run(task_manager, folder: Path, tasks: tuple[str, ...], model: str, model_args: str, simple: bool) -> dict:
    """lmms-eval's evaluation of ``model`` on ``tasks`` in one call, over fresh configs (some aggregations keep
    module-level state), in ``folder`` (some write submission files under the working directory); the prompt texts
    what its model handed the processor under "inputs", the docs of each task under "docs"."""
    configs = real_task_configs(tasks, folder, docs=DOCS, task_manager=task_manager)
    with recorded_inputs() as inputs, contextlib.chdir(folder):
        output = evaluate(model, model_args, configs, task_manager, simple, gen_kwargs=ANSWER, limit=LIMIT)
    docs = {task: min(count, LIMIT) for task, count in doc_counts(configs).items()}
    return output | {"inputs": inputs, "docs": docs}


@pytest.mark.parametrize("class_name", CLASSES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("drop_in", DROP_INS, ids=lambda d: d.family)
def test_strategy_none_answers_as_lmms_eval_adapter(
    checkpoints, task_manager, tmp_path: Path, drop_in: DropIn, layout: str, class_name: str
) -> None:
    path = checkpoints(drop_in, layout)
    shared = f"pretrained={path},{drop_in.shared_args}".rstrip(",")
    simple = CLASSES[class_name]
    cells = {}
    for tasks in drop_in.task_groups():
        folder = tmp_path / tasks[0]
        ours = run(task_manager, folder, tasks, drop_in.ours, f"{shared},strategy=none", simple)
        assert_every_doc_answered(ours)
        failure = THEIRS_FAIL.get((drop_in.family, layout, class_name, tasks[0]))
        if failure is not None:
            theirs_run = partial(run, task_manager, folder, tasks, drop_in.theirs, f"{shared},device_map=cpu", simple)
            assert_fails(failure, theirs_run)
            cells |= {task: f"{docs} ({drop_in.theirs} fails)" for task, docs in ours["docs"].items()}
        else:
            theirs = run(task_manager, folder, tasks, drop_in.theirs, f"{shared},device_map=cpu", simple)
            assert_same_answers(ours, theirs)
            cells |= {task: f"{docs}/{docs}" for task, docs in ours["docs"].items()}
        if not simple:  # the pruning path is the same in both classes: once is enough
            pruned_args = f"{shared},strategy=rank,keep_ratio=0.5"
            assert_pruned_counts(ours, run(task_manager, folder, tasks, drop_in.ours, pruned_args, simple))
    assert readme_row(drop_in.family, layout, class_name) == cells


def assert_fails(failure: tuple[type[Exception], str], evaluation: Callable[[], dict[str, Any]]) -> None:
    """lmms-eval's adapter fails as declared: the run aborts with the declared error, or, where the error is raised
    inside the adapter's own try block (llava_hf on transformers before 5.25, whose processor does not yet refuse
    the image), every doc is answered "" and the error is only logged."""
    error, reason = failure
    try:
        output = evaluation()
    except error:
        return
    blank = [answer for task in output["docs"] for answer in answers(output, task) if answer != [""]]
    assert not blank, f"expected lmms-eval's adapter to fail ({reason}); it answered {blank[:3]}"


def answers(output: dict[str, Any], task: str) -> list[Any]:
    return [sample["filtered_resps"] for sample in output["samples"][task]]


def assert_every_doc_answered(output: dict[str, Any]) -> None:
    """One sample per doc of every task, in doc order, and not one answer for everything."""
    for task, docs in output["docs"].items():
        assert [sample["doc_id"] for sample in output["samples"][task]] == list(range(docs)), task
    assert len({str(answer) for task in output["docs"] for answer in answers(output, task)}) > 1


def prompt_of(sample: dict[str, Any], prompts: list[str]) -> str:
    """Of the prompts a run gave the processor, the one closest to the doc's text (its first request argument):
    requests reach a model in an order of lmms-eval's choosing, and the templates rewrite the text."""
    text = str(sample["arguments"][0]) if sample["arguments"] else ""

    def closeness(prompt: str) -> tuple[int, int]:  # most of the text kept, then the fewest other characters
        blocks = difflib.SequenceMatcher(None, text, prompt, autojunk=False).get_matching_blocks()
        return sum(block.size for block in blocks), -len(prompt)

    return max(prompts, key=closeness, default="")


def assert_same_answers(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    """The same prompt texts and pixels handed to the processor (a random model can answer many docs alike, so the
    answers alone may not tell), then the same answers sample for sample (a difference shows both sides' prompts),
    and the same scores."""
    assert theirs["docs"] == ours["docs"]
    assert sorted(ours["inputs"].texts) == sorted(theirs["inputs"].texts)
    assert sorted(ours["inputs"].visuals) == sorted(theirs["inputs"].visuals)
    for task in ours["docs"]:
        differing = [
            {
                "doc": sample["doc_id"],
                "ours": mine,
                "lmms-eval's": their,
                "our prompt": prompt_of(sample, ours["inputs"].texts),
                "lmms-eval's prompt": prompt_of(sample, theirs["inputs"].texts),
            }
            for sample, mine, their in zip(
                ours["samples"][task], answers(ours, task), answers(theirs, task), strict=True
            )
            if mine != their
        ]
        assert not differing, f"{task}: {differing}"
        assert ours["results"][task] == theirs["results"][task], task


def assert_pruned_counts(full: dict[str, Any], pruned: dict[str, Any]) -> None:
    """Pruned, every doc answers, and each sample's counts add up: the LLM saw the unpruned prompt less the pruned
    visual tokens (and, on LLaVA-NeXT and OneVision, less the pruned row markers)."""
    assert_every_doc_answered(pruned)
    for task in full["docs"]:
        for unpruned, cut in zip(full["samples"][task], pruned["samples"][task], strict=True):
            for whole, counts in zip(unpruned["token_counts"], cut["token_counts"], strict=True):
                assert counts["visual_tokens_total"] == whole["visual_tokens_total"] == whole["visual_tokens_kept"]
                if counts["visual_tokens_total"] == 0:  # a doc without images
                    assert counts["input_tokens"] == whole["input_tokens"]
                    continue
                assert 0 < counts["visual_tokens_kept"] <= counts["visual_tokens_total"] / 2, task
                dropped = counts["visual_tokens_total"] - counts["visual_tokens_kept"]
                dropped += (counts.get("newline_tokens_total") or 0) - (counts.get("newline_tokens_kept") or 0)
                assert counts["input_tokens"] == whole["input_tokens"] - dropped, task


# ----- the README's parity table -----------------------------------------------------------------------------------

README = Path(__file__).resolve().parents[1] / "README.md"
TABLE_MARK = "<!-- drop-in parity table -->"


def readme_row(family: str, layout: str, class_name: str) -> dict[str, str]:
    """The cells of the README's drop-in table for one family, layout and class, by task ("-": not run)."""
    lines = README.read_text().split(TABLE_MARK, 2)[1].strip().splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells[:3] == [family, layout, class_name]:
            return {task: cell for task, cell in zip(header[3:], cells[3:], strict=True) if cell != "-"}
    return {}


def write_readme_table() -> None:
    """The README's table as the contract's cases will check it (``python tests/test_drop_in.py``); the tests then
    hold every cell to what they compared."""
    import tempfile

    from lmms_eval.tasks import TaskManager

    task_manager = TaskManager(include_path=str(TASKS_DIR))
    columns = [*IMAGE_TASKS, *LOCAL_TASKS, *VIDEO_TASKS]
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as folder:
        for tasks in ((*IMAGE_TASKS, *LOCAL_TASKS), VIDEO_TASKS):
            configs = real_task_configs(tasks, Path(folder) / tasks[0], docs=DOCS, task_manager=task_manager)
            counts |= {task: min(count, LIMIT) for task, count in doc_counts(configs).items()}
    lines = ["| family | layout | class | " + " | ".join(columns) + " |", "|" + "---|" * (3 + len(columns))]
    for drop_in in DROP_INS:
        for layout in LAYOUTS:
            for class_name in CLASSES:
                cells = {}
                for tasks in drop_in.task_groups():
                    fails = (drop_in.family, layout, class_name, tasks[0]) in THEIRS_FAIL
                    for task in tasks:
                        n = counts[task]
                        cells[task] = f"{n} ({drop_in.theirs} fails)" if fails else f"{n}/{n}"
                row = [drop_in.family, layout, class_name, *(cells.get(column, "-") for column in columns)]
                lines.append("| " + " | ".join(row) + " |")
    before, _, after = README.read_text().split(TABLE_MARK, 2)
    README.write_text(before + TABLE_MARK + "\n" + "\n".join(lines) + "\n" + TABLE_MARK + after)


if __name__ == "__main__":
    write_readme_table()

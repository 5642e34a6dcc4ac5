"""Shared fixtures: everything offline, on the CPU, with tiny models built from configs."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from fopru_eval.tools.checkpoints.llava import save_random_llava  # noqa: E402

# The fast subset for day-to-day work is `pytest -m "not slow"`: these modules run lmms-eval end to end (the drop-in
# contract, the CLI, sweeps, the demo, benchmarks, videos), and single tests elsewhere carry the mark themselves.
SLOW_MODULES = {"test_drop_in", "test_cli", "test_sweep", "test_demo", "test_bench", "test_full_size", "test_video"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.module.__name__ in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


REPO = Path(__file__).resolve().parents[1]
TASKS_DIR = REPO / "tasks"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved random-weight LLaVA-1.5-architecture checkpoint: 6 x 6 = 36 visual tokens per image."""
    return save_random_llava(tmp_path_factory.mktemp("tiny_llava"))


def draw_image(color: str, box: tuple[int, int, int, int], size: tuple[int, int] = (64, 56)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).rectangle(box, fill=color)
    return image


def user_turn(text: str, images: list[Image.Image]) -> list[dict]:
    content = [{"type": "image", "url": image} for image in images] + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


def mixed_prompts(wide: Image.Image, tall: Image.Image, small: Image.Image) -> list:
    """A batch of mixed sizes: a wide image, a tall one, a doc with two images (small, then wide), a text-only doc."""
    from fopru_eval.families import Prompt

    docs = [
        ("What color is the shape?", [wide]),
        ("Which shape is in the top left cell of the picture?", [tall]),
        ("Are the two shapes the same?", [small, wide]),
        ("Say hi.", []),
    ]
    return [Prompt(user_turn(q, images), images, f"t/test/{i}") for i, (q, images) in enumerate(docs)]


def llava_hf_simple_prompt(processor, prompt):
    """``prompt`` as lmms-eval's simple ``llava_hf`` renders it (models/simple/llava_hf.py, with its own constants): an
    ``<image>`` per image before the question, one user turn of text, the tokenizer's template or its Vicuna one. Where
    that template drops the question (a template for content lists), the processor's rendering of the messages, as
    the adapters declare."""
    from lmms_eval.models.simple.llava_hf import DEFAULT_IMAGE_TOKEN, VICUNA_CHAT_TEMPLATE

    [text] = [part["text"] for part in prompt.messages[-1]["content"] if part["type"] == "text"]
    if DEFAULT_IMAGE_TOKEN not in text and prompt.images:
        text = " ".join([DEFAULT_IMAGE_TOKEN] * len(prompt.images)) + "\n" + text
    tokenizer = processor.tokenizer
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}],
        chat_template=tokenizer.chat_template or VICUNA_CHAT_TEMPLATE,
        tokenize=False,
        add_generation_prompt=True,
    )
    if text not in rendered:
        rendered = processor.apply_chat_template(prompt.messages, add_generation_prompt=True, tokenize=False)
    return dataclasses.replace(prompt, text=rendered)


def lmms_eval(
    args: list[str], output: Path, processes: int = 1, include: Path = TASKS_DIR
) -> subprocess.CompletedProcess:
    """The lmms-eval CLI (or torchrun over it) in a subprocess, offline, with samples logged under ``output``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("TOKENIZERS_PARALLELISM", None)  # the adapter must cope without it
    launcher = [str(BIN / "lmms-eval")]
    if processes > 1:
        launcher = [str(BIN / "torchrun"), f"--nproc_per_node={processes}", "--master_port=29517", "-m", "lmms_eval"]
    command = launcher + args + ["--include_path", str(include), "--output_path", str(output), "--log_samples"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=output.parent)


def results_of(output: Path) -> tuple[dict, dict[str, list[dict]]]:
    """The results JSON and, per task, the logged samples sorted by doc id, of one lmms-eval run."""
    [results_file] = output.glob("*/*_results.json")
    samples = {}
    for path in output.glob("*/*_samples_*.jsonl"):
        task = path.stem.split("_samples_", 1)[1]
        samples[task] = sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda s: s["doc_id"])
    return json.loads(results_file.read_text()), samples


def greedy_decode_by_hand(adapter, inputs: dict, steps: int) -> list[int]:
    """Greedy tokens from a step-by-step decode of a LLaVA adapter's prepared ``inputs`` (one row), with no cache and
    no ``generate``: the kept features spliced into the embeddings, and every new token at the position after the last
    one in ``position_ids``. What ``generate`` must reproduce when the pruned prompt keeps its original positions."""
    inputs = dict(inputs)
    features = torch.cat(inputs.pop("mm_encoder_outputs")["image"].pooler_output)
    ids, positions = inputs["input_ids"][0], inputs["position_ids"][0]
    embed = adapter.model.get_input_embeddings()
    tokens = []
    with torch.inference_mode():
        embeds = embed(ids)
        embeds[ids == adapter.model.config.image_token_id] = features
        for _ in range(steps):
            hidden = adapter.model.model.language_model(inputs_embeds=embeds[None], position_ids=positions[None])
            token = adapter.model.lm_head(hidden.last_hidden_state[0, -1]).argmax()
            tokens.append(int(token))
            if token == adapter.eot_token_id:
                break
            embeds = torch.cat([embeds, embed(token)[None]])
            positions = torch.cat([positions, positions[-1:] + 1])
    return tokens


def broken_task(directory: Path) -> Path:
    """A folder with the task ``fopru_broken``: fopru_shapes_gen with an empty image, which passes every type check
    and then breaks the image processor inside the generation step."""
    task_dir = directory / "broken_task"
    task_dir.mkdir()
    (task_dir / "utils.py").write_text(
        "from PIL import Image\n\ndef visual(doc):\n    return [Image.new('RGB', (0, 0))]\n"
    )
    (task_dir / "fopru_broken.yaml").write_text(
        (TASKS_DIR / "fopru_shapes" / "fopru_shapes_gen.yaml")
        .read_text()
        .replace("task: fopru_shapes_gen", "task: fopru_broken")
        .replace("data/fopru_shapes_gen.parquet", str(TASKS_DIR / "fopru_shapes/data/fopru_shapes_gen.parquet"))
        .replace("utils.fopru_doc_to_visual", "utils.visual")
        .replace("!function utils.fopru_doc_to_text", "question")
        .replace("!function utils.fopru_gen_process_results", "!function utils.visual")
    )
    return task_dir


# ----- W&B offline runs ------------------------------------------------------------------------------------------


def offline_runs(directory: Path) -> list[Path]:
    return sorted((directory / "wandb").glob("offline-run-*"))


@dataclass
class OfflineRun:
    group: str = ""
    name: str = ""
    job_type: str = ""
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    artifacts: list[tuple[str, str]] = field(default_factory=list)  # (name, type)


def read_offline_run(run_dir: Path) -> OfflineRun:
    """An offline W&B run as replayed from its .wandb log: its group, name and job type, its config, its final
    summary and the artifacts it logged."""
    from wandb.proto import wandb_internal_pb2 as pb
    from wandb.sdk.internal import datastore

    store = datastore.DataStore()
    [log] = run_dir.glob("*.wandb")
    store.open_for_scan(str(log))
    run = OfflineRun()

    def apply(updates: list, removes: list, target: dict) -> None:
        for item in updates:
            key = item.key or item.nested_key[0]
            if not item.nested_key or len(item.nested_key) == 1:
                target[key] = json.loads(item.value_json)
            else:
                target.setdefault(key, {})
        for item in removes:
            target.pop(item.key or item.nested_key[0], None)

    while (data := store.scan_data()) is not None:
        record = pb.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.group, run.name, run.job_type = record.run.run_group, record.run.display_name, record.run.job_type
            apply(record.run.config.update, [], run.config)
        elif kind == "config":
            apply(record.config.update, record.config.remove, run.config)
        elif kind == "summary":
            apply(record.summary.update, record.summary.remove, run.summary)
        elif kind == "artifact":
            run.artifacts.append((record.artifact.name, record.artifact.type))
    return run


def read_table(run_dir: Path, key: str) -> list[dict]:
    [path] = run_dir.glob(f"files/media/table/{key}_*.table.json")
    table = json.loads(path.read_text())
    return [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]


# ----- the references' selection, in numpy ------------------------------------------------------------------------


def numpy_selection(significance: np.ndarray, strategy: str, ratio: float | None, tokens: int | None) -> np.ndarray:
    """Kept raster indices of one (rows, cols) significance grid; ties go to the lower index."""
    rows, cols = significance.shape
    if strategy == "none" or rows * cols == 0:
        return np.arange(rows * cols)
    if strategy == "rank":
        keep = min(tokens, rows * cols) if tokens else max(1, math.floor(rows * cols * ratio))
        return np.sort(np.argsort(-significance.ravel(), kind="stable")[:keep])
    keep_rows = max(1, min(rows, tokens // cols)) if tokens else max(1, math.floor(rows * ratio))
    best = np.sort(np.argsort(-significance.sum(axis=1), kind="stable")[:keep_rows])
    return (best[:, None] * cols + np.arange(cols)).ravel()

"""lmms-eval's own benchmark tasks over small generated docs, for tests that drive an adapter with the real prompts.

A task here is lmms-eval 0.7.3's own config, loaded through its own YAML loader (``include:`` followed, every
``!function`` resolved to lmms-eval's task functions: doc_to_visual, doc_to_text, doc_to_messages, process_results,
filters, aggregations), with only its data source swapped for a parquet file of generated docs. The docs have the
schema of the hub dataset the task loads: the fields its utils.py and YAML read, with their types, plus the other
fields of the dataset card where known. Images are small PIL drawings of varied sizes (64 x 48 to 200 x 150) stored
as the ``datasets`` Image feature the hub dataset uses; everything is seeded.

Offline variants:

- ``mmbench_en_dev`` scores with a GPT judge (``mmbench_aggregate_dev_results_eval`` calls the OpenAI API), so
  ``mmbench_en_dev_static`` stands in: the same YAML template, docs and prompts, scored by regex matching.
- ``gqa``'s ``process_docs`` downloads the images (``lmms-lab-encoder/GQA``, ``testdev_balanced_images``) and joins
  them on ``imageId``; that second data source is redirected to a generated parquet as well (``load_dataset`` in the
  module that holds ``gqa_process_docs``), the join left to lmms-eval.
- ``videomme`` reads ``<HF_HOME>/videomme/data/<videoID>.mp4``, HF_HOME as it was when the utils module was imported,
  and its ``dataset_kwargs`` (``video: True``) would download the videos: the generated clips are written under the
  doc folder and ``base_cache_dir`` of the module that holds ``videomme_doc_to_visual`` points there.
- ``mmbench_en_dev_static``'s second metric only writes an xlsx file for MMBench's server (openpyxl refuses the
  control characters random models emit): it is left out, the regex score kept.
- ``mme`` scores questions in pairs (two per image, ``mme_aggregate_results`` asserts it), so it gets an even number
  of docs: ``docs`` rounded up.

Every other task runs offline as configured. Both redirections touch only the module instance lmms-eval's loader
created for that one config (it executes a task's utils.py afresh for each ``!function``).

A dict config goes to ``simple_evaluate`` as lmms-eval's ``get_task_dict`` takes it (``TaskManager.load_config``),
but that path always builds the simple task class, whatever the model: a chat model (``is_simple = False``) needs
lmms-eval's messages task. ``evaluate`` therefore passes dicts for simple models and, for chat models, the
``ConfigurableMessagesTask`` objects lmms-eval builds for a task *name* (the class, config and model name its
``TaskManager`` would use).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from datasets import Features, Image, List, Value
from PIL import Image as PILImage
from PIL import ImageDraw

# lmms-eval 0.7.3 task names.
TASKS: tuple[str, ...] = (
    "pope",
    "mme",
    "mmmu_val",
    "mmbench_en_dev_static",
    "scienceqa_img",
    "gqa",
    "textvqa_val",
    "chartqa",
    "docvqa_val",
    "ocrbench",
    "seedbench",
    "ai2d",
    "realworldqa",
    "videomme",
)
VIDEO_TASKS: tuple[str, ...] = ("videomme",)
IMAGE_TASKS: tuple[str, ...] = tuple(task for task in TASKS if task not in VIDEO_TASKS)

SIZES = [(64, 48), (200, 150), (120, 96), (96, 128), (160, 90), (80, 80), (150, 200)]
COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "cyan"]


def draw(rng: random.Random, size: tuple[int, int] | None = None) -> PILImage.Image:
    """A shape of a random colour, kind and place on a random background."""
    width, height = size or rng.choice(SIZES)
    image = PILImage.new("RGB", (width, height), rng.choice(["white", "gray", "beige"]))
    x0, y0 = rng.randrange(width // 2), rng.randrange(height // 2)
    box = (x0, y0, x0 + rng.randrange(8, width // 2 + 8), y0 + rng.randrange(8, height // 2 + 8))
    shape = rng.choice(["rectangle", "ellipse"])
    getattr(ImageDraw.Draw(image), shape)(box, fill=rng.choice(COLORS))
    return image


# ----- the docs of each task, in the hub dataset's schema ----------------------------------------------------------
# Each builder returns (features, rows). Where the fields and types come from:
# - the hub dataset card (``dataset_info``) of the lmms-lab dataset the task's mirror copies: pope (lmms-lab/POPE),
#   docvqa_val (lmms-lab/DocVQA, config DocVQA), videomme (lmms-lab/Video-MME), mmbench_en_dev_static
#   (lmms-lab/MMBench, config en; ``index`` as int64, which its scorer needs: it compares it with 1e6);
# - seedbench: the fields of AILab-CVC/SEED-Bench's builder, with lmms-lab's list of images (frames for a video doc)
#   and question_type_id as int16, as lmms-lab/SEED-Bench-2 has them;
# - the others: the fields the task's utils.py and YAML read, typed as they use them (MMMU's options and img_type are
#   Python lists written as strings, ScienceQA's answer an index, AI2D's answer an index as a string, OCRBench's
#   answer a list), plus the dataset's other fields where known (GQA's instructions keep the scalar and list fields
#   but leave out the nested ``annotations`` and ``semantic``).

Docs = tuple[Features, list[dict[str, Any]]]


def pope_docs(rng: random.Random, n: int) -> Docs:
    features = Features(
        {
            "id": Value("string"),
            "question_id": Value("string"),
            "question": Value("string"),
            "answer": Value("string"),
            "image_source": Value("string"),
            "image": Image(),
            "category": Value("string"),
        }
    )
    rows = [
        {
            "id": str(i),
            "question_id": str(i + 1),
            "question": f"Is there a {rng.choice(['dog', 'car', 'cup', 'chair'])} in the image?",
            "answer": rng.choice(["yes", "no"]),
            "image_source": f"COCO_val2014_{i:012d}",
            "image": draw(rng),
            "category": rng.choice(["adversarial", "popular", "random"]),
        }
        for i in range(n)
    ]
    return features, rows


def mme_docs(rng: random.Random, n: int) -> Docs:
    features = Features(
        {
            "question_id": Value("string"),
            "image": Image(),
            "question": Value("string"),
            "answer": Value("string"),
            "category": Value("string"),
        }
    )
    rows = []
    for pair in range((n + 1) // 2):  # MME asks two questions (one Yes, one No) about each image
        category = rng.choice(["existence", "count", "color", "OCR", "commonsense_reasoning", "code_reasoning"])
        image = draw(rng)
        for answer in ("Yes", "No"):
            color = rng.choice(COLORS)
            rows.append(
                {
                    "question_id": f"{category}/{pair:04d}.png",
                    "image": image,
                    "question": f"Is there a {color} shape in this image? Please answer yes or no.",
                    "answer": answer,
                    "category": category,
                }
            )
    return features, rows


def mmmu_docs(rng: random.Random, n: int) -> Docs:
    features = Features(
        {
            "id": Value("string"),
            "question": Value("string"),
            "options": Value("string"),  # a Python list, as a string
            "explanation": Value("string"),
            **{f"image_{k}": Image() for k in range(1, 8)},
            "img_type": Value("string"),  # also a Python list as a string
            "answer": Value("string"),
            "topic_difficulty": Value("string"),
            "question_type": Value("string"),
            "subfield": Value("string"),
        }
    )
    subjects = ["Art", "Biology", "Physics", "Computer_Science", "Math"]
    rows = []
    for i in range(n):
        images = 2 if i % 3 == 1 else 1  # some docs refer to two images
        kind = "open" if i % 3 == 2 else "multiple-choice"
        question = "<image 1> What colour is the shape?"
        if images == 2:
            question = "Which shape is larger, the one in <image 1> or the one in <image 2>?"
        options = [] if kind == "open" else rng.sample(COLORS, 4)
        row = {
            "id": f"validation_{rng.choice(subjects)}_{i + 1}",
            "question": question,
            "options": repr(options),
            "explanation": "",
            **{f"image_{k}": draw(rng) if k <= images else None for k in range(1, 8)},
            "img_type": repr(["Diagrams"]),
            "answer": rng.choice("ABCD") if kind == "multiple-choice" else str(rng.randrange(10)),
            "topic_difficulty": rng.choice(["Easy", "Medium", "Hard"]),
            "question_type": kind,
            "subfield": "Shapes",
        }
        rows.append(row)
    return features, rows


def mmbench_docs(rng: random.Random, n: int) -> Docs:
    features = Features(
        {
            "index": Value("int64"),
            "question": Value("string"),
            "hint": Value("string"),
            "answer": Value("string"),
            "A": Value("string"),
            "B": Value("string"),
            "C": Value("string"),
            "D": Value("string"),
            "category": Value("string"),
            "image": Image(),
            "source": Value("string"),
            "L2-category": Value("string"),
            "comment": Value("string"),
            "split": Value("string"),
        }
    )
    rows = []
    for i in range(n):
        options = rng.sample(COLORS, 4)
        if i % 2:  # missing options and hints are the string "nan" in the hub dataset
            options[2:] = ["nan", "nan"]
        rows.append(
            {
                "index": i,
                "question": "What colour is the shape?",
                "hint": "The picture shows one shape." if i % 3 == 0 else "nan",
                "answer": rng.choice("AB"),
                **dict(zip("ABCD", options, strict=True)),
                "category": rng.choice(["attribute_recognition", "image_scene"]),
                "image": draw(rng),
                "source": "generated",
                "L2-category": "attribute_reasoning",
                "comment": "nan",
                "split": "dev",
            }
        )
    return features, rows


def scienceqa_docs(rng: random.Random, n: int) -> Docs:
    features = Features(
        {
            "image": Image(),
            "question": Value("string"),
            "choices": List(Value("string")),
            "answer": Value("int8"),
            "hint": Value("string"),
            "task": Value("string"),
            "grade": Value("string"),
            "subject": Value("string"),
            "topic": Value("string"),
            "category": Value("string"),
            "skill": Value("string"),
            "lecture": Value("string"),
            "solution": Value("string"),
        }
    )
    rows = []
    for i in range(n):
        choices = rng.sample(COLORS, 2 + i % 3)
        rows.append(
            {
                "image": draw(rng),
                "question": "Which colour is the shape?",
                "choices": choices,
                "answer": rng.randrange(len(choices)),
                "hint": "Look at the picture." if i % 2 else "",  # empty hints are common
                "task": "closed choice",
                "grade": "grade4",
                "subject": "natural science",
                "topic": "colours",
                "category": "Identify colours",
                "skill": "Identify colours",
                "lecture": "",
                "solution": "",
            }
        )
    return features, rows


def gqa_docs(rng: random.Random, n: int) -> Docs:
    features = Features(
        {
            "id": Value("string"),
            "imageId": Value("string"),
            "question": Value("string"),
            "answer": Value("string"),
            "fullAnswer": Value("string"),
            "isBalanced": Value("bool"),
            "groups": {"global": Value("string"), "local": Value("string")},
            "entailed": List(Value("string")),
            "equivalent": List(Value("string")),
            "types": {"structural": Value("string"), "semantic": Value("string"), "detailed": Value("string")},
            "semanticStr": Value("string"),
        }
    )
    rows = []
    for i in range(n):
        color = rng.choice(COLORS)
        rows.append(
            {
                "id": f"20{i:06d}",
                "imageId": f"n{161313 + i // 2}",  # two questions share an image
                "question": "What colour is the shape?",
                "answer": color,
                "fullAnswer": f"The shape is {color}.",
                "isBalanced": True,
                "groups": {"global": "color", "local": "10q-shape_color"},
                "entailed": [],
                "equivalent": [f"20{i:06d}"],
                "types": {"structural": "query", "semantic": "attr", "detailed": "colorObj"},
                "semanticStr": "select: shape ->query: color",
            }
        )
    return features, rows


def gqa_image_docs(rows: list[dict[str, Any]], rng: random.Random) -> Docs:
    """``testdev_balanced_images``: one image per ``imageId`` of the instructions."""
    features = Features({"id": Value("string"), "image": Image()})
    ids = sorted({row["imageId"] for row in rows})
    return features, [{"id": image_id, "image": draw(rng)} for image_id in ids]


def textvqa_docs(rng: random.Random, n: int) -> Docs:
    features = Features(
        {
            "image_id": Value("string"),
            "question_id": Value("int32"),
            "question": Value("string"),
            "question_tokens": List(Value("string")),
            "image": Image(),
            "image_width": Value("int32"),
            "image_height": Value("int32"),
            "flickr_original_url": Value("string"),
            "flickr_300k_url": Value("string"),
            "answers": List(Value("string")),
            "image_classes": List(Value("string")),
            "set_name": Value("string"),
            "ocr_tokens": List(Value("string")),
        }
    )
    rows = []
    for i in range(n):
        image = draw(rng)
        question = "what colour is the shape?"
        rows.append(
            {
                "image_id": f"{rng.getrandbits(64):016x}",
                "question_id": 34602 + i,
                "question": question,
                "question_tokens": question.rstrip("?").split(),
                "image": image,
                "image_width": image.width,
                "image_height": image.height,
                "flickr_original_url": "",
                "flickr_300k_url": "",
                "answers": [rng.choice(COLORS) for _ in range(10)],  # ten annotators
                "image_classes": ["Shape"],
                "set_name": "val",
                "ocr_tokens": [],
            }
        )
    return features, rows


def chartqa_docs(rng: random.Random, n: int) -> Docs:
    features = Features(
        {"type": Value("string"), "question": Value("string"), "answer": Value("string"), "image": Image()}
    )
    rows = [
        {
            "type": ["human_test", "augmented_test"][i % 2],  # both splits, so every metric gets samples
            "question": "What is the highest value in the chart?",
            "answer": str(rng.randrange(100)),
            "image": draw(rng),
        }
        for i in range(n)
    ]
    return features, rows


def docvqa_docs(rng: random.Random, n: int) -> Docs:
    features = Features(
        {
            "questionId": Value("string"),
            "question": Value("string"),
            "question_types": List(Value("string")),
            "image": Image(),
            "docId": Value("int64"),
            "ucsf_document_id": Value("string"),
            "ucsf_document_page_no": Value("string"),
            "answers": List(Value("string")),
            "data_split": Value("string"),
        }
    )
    rows = [
        {
            "questionId": str(49153 + i),
            "question": "What is the title of the document?",
            "question_types": ["layout"],
            "image": draw(rng),
            "docId": 14465 + i,
            "ucsf_document_id": f"pybv{i:04d}",
            "ucsf_document_page_no": str(1 + i),
            "answers": [rng.choice(COLORS), rng.choice(COLORS)],
            "data_split": "val",
        }
        for i in range(n)
    ]
    return features, rows


def ocrbench_docs(rng: random.Random, n: int) -> Docs:
    features = Features(
        {
            "dataset": Value("string"),
            "question": Value("string"),
            "question_type": Value("string"),
            "answer": List(Value("string")),
            "image": Image(),
        }
    )
    kinds = [
        ("IIIT5K", "Regular Text Recognition"),
        ("HME100k", "Handwritten Mathematical Expression Recognition"),  # scored without spaces
        ("FUNSD", "Key Information Extraction"),
    ]
    rows = []
    for i in range(n):
        dataset, question_type = kinds[i % len(kinds)]
        rows.append(
            {
                "dataset": dataset,
                "question": "what is written in the image?",
                "question_type": question_type,
                "answer": [rng.choice(COLORS).upper()],
                "image": draw(rng),
            }
        )
    return features, rows


def seedbench_docs(rng: random.Random, n: int) -> Docs:
    features = Features(
        {
            "answer": Value("string"),
            "choice_a": Value("string"),
            "choice_b": Value("string"),
            "choice_c": Value("string"),
            "choice_d": Value("string"),
            "data_id": Value("string"),
            "data_type": Value("string"),
            "question": Value("string"),
            "question_id": Value("string"),
            "question_type_id": Value("int16"),
            "segment": Value("string"),
            "image": List(Image()),  # a video doc holds several frames
        }
    )
    rows = []
    for i in range(n):
        video = i % 3 == 2  # image and video docs, so both seed_image and seed_video get samples
        choices = rng.sample(COLORS, 4)
        rows.append(
            {
                "answer": rng.choice("ABCD"),
                **{f"choice_{c}": choice for c, choice in zip("abcd", choices, strict=True)},
                "data_id": f"{i}.mp4" if video else f"{i}.jpg",
                "data_type": "video" if video else "image",
                "question": "What colour is the shape?",
                "question_id": str(101669 + i),
                "question_type_id": 10 if video else 1,
                "segment": "[0, 30]" if video else "",
                "image": [draw(rng, (96, 72)) for _ in range(3)] if video else [draw(rng)],
            }
        )
    return features, rows


def ai2d_docs(rng: random.Random, n: int) -> Docs:
    features = Features(
        {"question": Value("string"), "options": List(Value("string")), "answer": Value("string"), "image": Image()}
    )
    rows = []
    for _ in range(n):
        options = rng.sample(COLORS, 4)
        question = "What colour is the shape?"
        rows.append({"question": question, "options": options, "answer": str(rng.randrange(4)), "image": draw(rng)})
    return features, rows


def realworldqa_docs(rng: random.Random, n: int) -> Docs:
    features = Features({"image": Image(), "question": Value("string"), "answer": Value("string")})
    rows = []
    for i in range(n):
        if i % 2:
            options = rng.sample(COLORS, 3)
            question = "What colour is the shape?\n" + "\n".join(
                f"{c}. {o}" for c, o in zip("ABC", options, strict=True)
            )
            question += "\nPlease answer directly with only the letter of the correct option and nothing else."
            answer = rng.choice("ABC")
        else:
            question = "How many shapes are there?\nPlease answer directly with a single word or number."
            answer = "1"
        rows.append({"image": draw(rng), "question": question, "answer": answer})
    return features, rows


def videomme_docs(rng: random.Random, n: int) -> Docs:
    features = Features(
        {
            "video_id": Value("string"),
            "duration": Value("string"),
            "domain": Value("string"),
            "sub_category": Value("string"),
            "url": Value("string"),
            "videoID": Value("string"),
            "question_id": Value("string"),
            "task_type": Value("string"),
            "question": Value("string"),
            "options": List(Value("string")),
            "answer": Value("string"),
        }
    )
    rows = []
    for i in range(n):
        video_id = f"{rng.getrandbits(40):010x}"  # a YouTube-like id; the clip is <folder>/videomme/data/<id>.mp4
        options = [f"{c}. {o}" for c, o in zip("ABCD", rng.sample(COLORS, 4), strict=True)]
        rows.append(
            {
                "video_id": f"{i + 1:03d}",
                "duration": "short",
                "domain": "Knowledge",
                "sub_category": "Geography",
                "url": f"https://www.youtube.com/watch?v={video_id}",
                "videoID": video_id,
                "question_id": f"{i + 1:03d}-1",
                "task_type": "Attribute Perception",
                "question": "What colour is the shape in the video?",
                "options": options,
                "answer": rng.choice("ABCD"),
            }
        )
    return features, rows


BUILDERS: dict[str, Callable[[random.Random, int], Docs]] = {
    "pope": pope_docs,
    "mme": mme_docs,
    "mmmu_val": mmmu_docs,
    "mmbench_en_dev_static": mmbench_docs,
    "scienceqa_img": scienceqa_docs,
    "gqa": gqa_docs,
    "textvqa_val": textvqa_docs,
    "chartqa": chartqa_docs,
    "docvqa_val": docvqa_docs,
    "ocrbench": ocrbench_docs,
    "seedbench": seedbench_docs,
    "ai2d": ai2d_docs,
    "realworldqa": realworldqa_docs,
    "videomme": videomme_docs,
}


def write_video(path: Path, rng: random.Random, frames: int = 6) -> None:
    """A short clip (PyAV, MPEG-4) whose frames show a moving shape."""
    import av

    width, height = rng.choice([(64, 48), (96, 64), (128, 96)])
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(np.asarray(draw(rng, (width, height))), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def write_docs(task: str, folder: Path, docs: int = 3) -> Path:
    """Writes ``docs`` generated docs of ``task`` to ``folder/<task>.parquet`` (seeded by the task name) and what
    they point at: GQA's image table, Video-MME's clips. Returns the parquet path."""
    rng = random.Random(f"{task}-{docs}")
    features, rows = BUILDERS[task](rng, docs)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{task}.parquet"
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))
    if task == "gqa":
        image_features, images = gqa_image_docs(rows, rng)
        datasets.Dataset.from_list(images, features=image_features).to_parquet(str(folder / "gqa_images.parquet"))
    if task == "videomme":
        for row in rows:
            write_video(folder / "videomme" / "data" / f"{row['videoID']}.mp4", rng)
    return path


def redirect_side_sources(task: str, config: dict[str, Any], folder: Path) -> None:
    """Points what a task's functions read besides its dataset at the generated files (see the module docstring)."""
    if task == "gqa":
        images = str(folder / "gqa_images.parquet")

        def load_images(path: str, name: str, split: str, **_: Any) -> datasets.Dataset:
            assert (path, name) == ("lmms-lab-encoder/GQA", "testdev_balanced_images"), (path, name)
            return datasets.load_dataset("parquet", data_files={split: images}, split=split)

        config["process_docs"].__globals__["load_dataset"] = load_images
    if task == "videomme":
        config["doc_to_visual"].__globals__["base_cache_dir"] = str(folder)


def real_task_configs(
    names: list[str] | tuple[str, ...], folder: Path, docs: int = 3, task_manager: Any = None
) -> list[dict[str, Any]]:
    """Per task, lmms-eval's own config over ``docs`` generated docs written under ``folder``: the task's YAML as
    lmms-eval's loader reads it, with only the data source replaced (a parquet file as the task's test split). A task
    of this project's ``tasks/`` (which ``task_manager`` must index) keeps its own data."""
    from lmms_eval.tasks import TaskManager
    from lmms_eval.utils import load_yaml_config

    task_manager = task_manager or TaskManager()
    configs = []
    for name in names:
        config = load_yaml_config(yaml_path=task_manager.task_index[name]["yaml_path"], mode="full")
        if name not in BUILDERS:  # one of this project's tasks (--include_path tasks), which ships its data
            configs.append(config)
            continue
        path = write_docs(name, Path(folder), docs)
        config["dataset_path"] = "parquet"
        config["dataset_kwargs"] = {"data_files": {config["test_split"]: str(path)}}
        # None rather than absent: lmms-eval lays a dict config whose task name it knows over that task's YAML, which
        # would bring the hub config name (e.g. "en", "ScienceQA-IMG") back.
        config["dataset_name"] = None
        redirect_side_sources(name, config, Path(folder))
        if name == "mmbench_en_dev_static":
            # Its second metric only writes an xlsx file to submit to MMBench's server, which refuses the control
            # characters a random model emits; the score (the first metric) stays lmms-eval's.
            config["metric_list"] = [m for m in config["metric_list"] if m["metric"] != "submission"]
        configs.append(config)
    return configs


def evaluate(
    model: str,
    model_args: str,
    configs: list[dict[str, Any]],
    task_manager: Any,
    force_simple: bool = False,
    gen_kwargs: str = "max_new_tokens=8",
    limit: int | None = None,
) -> dict[str, Any]:
    """lmms-eval's ``simple_evaluate`` of ``model`` over ``configs`` in this process, as its CLI runs a model by name
    (``TaskManager(model_name=model)``), with a short generation. Returns its output; ``samples`` sorted by doc id."""
    from lmms_eval import models
    from lmms_eval.api.task import ConfigurableMessagesTask
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.utils import get_datetime_str

    # TaskManager(model_name=model) without indexing every task again: the model name is all that differs.
    manager = copy.copy(task_manager)
    manager.model_name = model
    tasks: list[Any] = [dict(config) for config in configs]
    if not models.get_model(model, force_simple).is_simple:
        # get_task_dict builds every dict config with the simple task class; a chat model needs the messages task.
        tasks = [ConfigurableMessagesTask(config=config, model_name=model) for config in tasks]
    output = simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=tasks,
        task_manager=manager,
        batch_size=1,
        device="cpu",
        log_samples=True,
        force_simple=force_simple,
        gen_kwargs=gen_kwargs,
        limit=limit,
        datetime_str=get_datetime_str(),
    )
    output["samples"] = {
        task: sorted(samples, key=lambda s: s["doc_id"]) for task, samples in output["samples"].items()
    }
    return output


@dataclass
class ProcessorInputs:
    """What a run handed the Hugging Face processor: every prompt text, and a digest of every image and video."""

    texts: list[str] = field(default_factory=list)
    visuals: list[str] = field(default_factory=list)


def digest(visual: Any) -> str:
    """A digest of an image or a video's frames (PIL image, array or tensor): its shape and its bytes."""
    array = np.asarray(visual.cpu() if hasattr(visual, "cpu") else visual)
    return f"{array.shape}:{hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()}"


@contextlib.contextmanager
def recorded_inputs() -> Iterator[ProcessorInputs]:
    """The prompt texts and visuals every Hugging Face processor call gets while the block runs (lmms-eval's adapters
    and ours both go through the processor): to compare what two sides fed the model, and to show it when their
    answers differ."""
    from transformers.processing_utils import ProcessorMixin

    inputs = ProcessorInputs()
    call = ProcessorMixin.__call__

    def recording(self: Any, *args: Any, **kwargs: Any) -> Any:
        text = kwargs.get("text")
        inputs.texts.extend([text] if isinstance(text, str) else text or [])
        for name in ("images", "videos"):
            visuals = kwargs.get(name)
            visuals = [] if visuals is None else visuals if isinstance(visuals, list | tuple) else [visuals]
            inputs.visuals.extend(digest(visual) for visual in visuals)
        return call(self, *args, **kwargs)

    ProcessorMixin.__call__ = recording
    try:
        yield inputs
    finally:
        ProcessorMixin.__call__ = call


def doc_counts(configs: list[dict[str, Any]]) -> dict[str, int]:
    """The number of generated docs of each config's test split."""
    counts = {}
    for config in configs:
        files, split = config["dataset_kwargs"]["data_files"], config["test_split"]
        counts[config["task"]] = datasets.load_dataset("parquet", data_files=files, split=split).num_rows
    return counts

"""Draw the synthetic fopru_shapes images and write them as parquet files.

Every image is 336x336 RGB on a light background, split into a 3x3 grid of
cells. One to three small coloured shapes sit in distinct cells, and each
question names a cell ("top left", "center", ...), so the answer depends on
WHERE things are: a pruning method that drops the tokens covering the asked
cell loses the answer. Distractor shapes never share the asked attribute with
the target, so a model cannot answer correctly by ignoring the position.

The output is deterministic (fixed seeds, no wall-clock or host data), so
running this script again rewrites byte-identical images and the same rows.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python tasks/fopru_shapes/make_data.py
"""

from __future__ import annotations

import argparse
import io
import json
import random
from pathlib import Path

import datasets
from PIL import Image, ImageDraw

IMAGE_SIZE = 336
GRID = 3
CELL = IMAGE_SIZE // GRID  # 112 px
DOCS_PER_TASK = 48

ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (30, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 195, 0),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = ((255, 255, 255), (250, 248, 238), (240, 245, 252), (246, 246, 246))
GRID_LINE = (205, 205, 205)

SEEDS = {"fopru_shapes_gen": 1234, "fopru_shapes_mc": 5678}


def position_name(row: int, col: int) -> str:
    """Human name of a cell: 'top left', ..., 'center', ..., 'bottom right'."""
    if (row, col) == (1, 1):
        return "center"
    return f"{ROWS[row]} {COLS[col]}"


def draw_image(rng: random.Random, placed: list[dict]) -> bytes:
    """Draw the grid and the shapes; return PNG bytes.

    Shapes are small (28-44 px across, about 2-4% of the image area) so that
    only a handful of vision-encoder patches cover each of them.
    """
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), rng.choice(BACKGROUNDS))
    draw = ImageDraw.Draw(img)
    for k in range(1, GRID):
        draw.line([(k * CELL, 0), (k * CELL, IMAGE_SIZE)], fill=GRID_LINE, width=2)
        draw.line([(0, k * CELL), (IMAGE_SIZE, k * CELL)], fill=GRID_LINE, width=2)
    for item in placed:
        r = rng.randint(14, 22)  # half size
        margin = r + 8
        cx = item["col"] * CELL + rng.randint(margin, CELL - margin)
        cy = item["row"] * CELL + rng.randint(margin, CELL - margin)
        fill = COLORS[item["color"]]
        if item["shape"] == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif item["shape"] == "square":
            draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:  # upward-pointing triangle
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def make_doc(rng: random.Random, index: int, target_cell: int, answer: str, task: str) -> dict:
    """Build one row: a layout, its image, and one position-dependent question."""
    question_type = "color" if answer in COLORS else "shape"
    num_shapes = 1 + (index // 2) % 3  # balanced 1, 2, 3 objects
    other_cells = [c for c in range(GRID * GRID) if c != target_cell]
    cells = [target_cell] + rng.sample(other_cells, num_shapes - 1)

    target = {"color": rng.choice(list(COLORS)), "shape": rng.choice(SHAPES), question_type: answer}
    placed = []
    for i, cell in enumerate(cells):
        if i == 0:
            color, shape = target["color"], target["shape"]
        elif question_type == "color":
            color = rng.choice([c for c in COLORS if c != target["color"]])
            shape = rng.choice(SHAPES)
        else:
            color = rng.choice(list(COLORS))
            shape = rng.choice([s for s in SHAPES if s != target["shape"]])
        placed.append({"row": cell // GRID, "col": cell % GRID, "color": color, "shape": shape})

    position = position_name(target_cell // GRID, target_cell % GRID)
    if question_type == "color":
        question = f"What color is the shape in the {position} cell?"
        choices = list(COLORS)
    else:
        question = f"Which shape is in the {position} cell?"
        choices = list(SHAPES)
    return {
        "question_id": f"{task}_{index:04d}",
        "image": {"bytes": draw_image(rng, placed), "path": None},
        "question": question,
        "answer": answer,
        "choices": choices,
        "answer_index": choices.index(answer),
        "question_type": question_type,
        "position": position,
        "num_shapes": num_shapes,
        "layout": json.dumps([{**p, "position": position_name(p["row"], p["col"])} for p in placed]),
    }


def build_task(task: str) -> datasets.Dataset:
    rng = random.Random(SEEDS[task])
    # Even docs ask for a colour, odd docs for a shape; each answer occurs equally
    # often, so a constant answer scores at chance (1/4 or 1/3 per question type).
    half = DOCS_PER_TASK // 2
    colors = rng.sample(list(COLORS) * (half // len(COLORS)), half)
    shapes = rng.sample(list(SHAPES) * (half // len(SHAPES)), half)
    rows: list[dict] = []
    order: list[int] = []
    for index in range(DOCS_PER_TASK):
        if not order:  # every block of 9 docs asks about each cell once
            order = rng.sample(range(GRID * GRID), GRID * GRID)
        answer = colors[index // 2] if index % 2 == 0 else shapes[index // 2]
        rows.append(make_doc(rng, index, order.pop(), answer, task))
    features = datasets.Features(
        {
            "question_id": datasets.Value("string"),
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "choices": datasets.Sequence(datasets.Value("string")),
            "answer_index": datasets.Value("int64"),
            "question_type": datasets.Value("string"),
            "position": datasets.Value("string"),
            "num_shapes": datasets.Value("int64"),
            "layout": datasets.Value("string"),
        }
    )
    columns = {name: [row[name] for row in rows] for name in features}
    return datasets.Dataset.from_dict(columns, features=features)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "data")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for task in SEEDS:
        path = args.out_dir / f"{task}.parquet"
        build_task(task).to_parquet(str(path))
        print(f"wrote {path} ({path.stat().st_size / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()

"""Synthetic scenes for the demo: a few small coloured shapes on a textured background with clutter, and questions
that each need different evidence from the image.

A scene is 336 x 336 pixels, LLaVA-1.5's geometry: 24 x 24 = 576 patches of 14 pixels. Like a photograph it is mostly
background. It has 2-5 objects, each a small (22-32 px) saturated shape alone in a cell of a 3 x 3 grid, so each covers
2-3 patches per side, about 1% of the image. They sit on a textured background (a gradient between two muted colours,
soft blotches, fine grain) with 4-9 pieces of clutter (muted blobs and strokes) that no question asks about. So most
of the 576 tokens are redundant, and a question still fails if the tokens of the object it needs are dropped.

The question kinds (``KINDS``), each needing different evidence:
- ``attribute``: the colour or the shape of the object in a named cell ("What color is the shape in the top left?");
- ``existence``: POPE-style yes/no, "Is there a red circle?", half of them about absent objects; of the absent ones,
  half share a colour or shape with an object in the scene, so a glimpse of colour alone does not answer them;
- ``count``: "How many shapes are there?" (two to five; clutter is not counted);
- ``relation``: the colour or shape of the object in the cell next to a named one ("What shape is left of the red
  circle?"; the named object is the only one of its colour and shape).

Every scene is drawn from one integer seed, so the same seed always gives the same pixels and questions. Training
draws seeds below ``DEV_SEED_OFFSET``; the dev split uses seeds from it and the test split from ``TEST_SEED_OFFSET``,
so no test or dev scene is ever trained on.
"""

from __future__ import annotations

import colorsys
import random
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

IMAGE_SIZE = 336  # pixels; with 14-pixel patches the vision tower sees 24 x 24 = 576 patch tokens
PATCH_SIZE = 14
GRID = 3  # cells per side; each cell is 112 x 112 pixels and holds at most one object
CELL = IMAGE_SIZE // GRID
MIN_OBJECTS, MAX_OBJECTS = 2, 5
OBJECT_HALF_SIZE = (11, 16)  # pixels from centre to edge
CLUTTER = (4, 9)  # pieces per scene

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (30, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 190, 0),
}
SHAPES = ("circle", "square", "triangle")
COUNT_WORDS = {2: "two", 3: "three", 4: "four", 5: "five"}
ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")
# Relation word -> (row, column) offset from the named object to the one asked about.
RELATIONS: dict[str, tuple[int, int]] = {"left of": (0, -1), "right of": (0, 1), "above": (-1, 0), "below": (1, 0)}
KINDS = ("attribute", "existence", "count", "relation")

# Training draws its scenes from two ranges below the dev seeds: stage 1 (the tower) from VISION_SEED_OFFSET and
# stage 2 (the conversations) from LANGUAGE_SEED_OFFSET, so no training scene shares a seed with a dev or test scene.
VISION_SEED_OFFSET = 0
LANGUAGE_SEED_OFFSET = 500_000_000
DEV_SEED_OFFSET = 900_000_000  # dev scenes use seeds >= this (and below the test seeds); training draws below it
TEST_SEED_OFFSET = 1_000_000_000  # test scenes use seeds >= this


@dataclass(frozen=True)
class SceneObject:
    row: int
    col: int
    color: str
    shape: str

    @property
    def cell(self) -> int:
        return self.row * GRID + self.col


@dataclass(frozen=True)
class Question:
    kind: str
    text: str
    answer: str


@dataclass(frozen=True)
class Scene:
    seed: int
    objects: tuple[SceneObject, ...]
    image: Image.Image

    def at(self, row: int, col: int) -> SceneObject | None:
        return next((o for o in self.objects if (o.row, o.col) == (row, col)), None)


def position_name(row: int, col: int) -> str:
    """'top left', 'top center', ..., 'center', ..., 'bottom right'."""
    return "center" if (row, col) == (1, 1) else f"{ROWS[row]} {COLS[col]}"


def vocabulary() -> list[str]:
    """Every word the questions and answers use, so the demo tokenizer gives each a token of its own."""
    texts = [f"What color is the shape in the {position_name(r, c)}?" for r in range(GRID) for c in range(GRID)]
    texts += [f"What shape is {rel} the {c} {s}?" for rel in RELATIONS for c in COLORS for s in SHAPES]
    texts += [f"Is there a {c} {s}?" for c in COLORS for s in SHAPES]
    texts += ["How many shapes are there?", "Describe the image.", ","]
    # Answers follow "ASSISTANT:" after a space, so they are learned as space-led words (" red").
    texts += [" " + " ".join(words) for words in (COUNT_WORDS.values(), COLORS, SHAPES, ("yes", "no"))]
    return texts


def answer_words() -> list[str]:
    """Every one-word answer."""
    return [*COLORS, *SHAPES, *COUNT_WORDS.values(), "yes", "no"]


# ----- drawing ----------------------------------------------------------------------------------------------------


def _muted(rng: random.Random, saturation: tuple[float, float], value: tuple[float, float]) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*saturation), rng.uniform(*value))
    return round(r * 255), round(g * 255), round(b * 255)


def draw_background(rng: random.Random) -> Image.Image:
    """A gradient between two muted colours in a random direction, soft blotches and fine grain: a texture with no
    answer in it, different in every scene."""
    np_rng = np.random.default_rng(rng.getrandbits(32))
    start = np.array(_muted(rng, (0.05, 0.3), (0.45, 0.9)), dtype=np.float32)
    end = np.array(_muted(rng, (0.05, 0.3), (0.45, 0.9)), dtype=np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    axis = np.linspace(-1, 1, IMAGE_SIZE, dtype=np.float32)
    along = (np.cos(angle) * axis[None, :] + np.sin(angle) * axis[:, None]) / np.sqrt(2) * 0.5 + 0.5
    pixels = start + (end - start) * along[..., None]
    # Blotches: a coarse random grid, upsampled smoothly, about 30 levels deep.
    coarse = np_rng.normal(0, 1, (rng.randint(4, 9),) * 2 + (3,)).astype(np.float32)
    coarse_image = Image.fromarray(np.clip(coarse * 40 + 128, 0, 255).astype(np.uint8))
    blotches = np.asarray(coarse_image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC), dtype=np.float32) - 128
    pixels += blotches * rng.uniform(0.2, 0.6)
    pixels += np_rng.normal(0, rng.uniform(2, 8), (IMAGE_SIZE, IMAGE_SIZE, 1)).astype(np.float32)  # grain
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def draw_clutter(rng: random.Random, image: Image.Image) -> None:
    """Muted blobs and strokes anywhere in the image: things to look at that no question is about."""
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(*CLUTTER)):
        fill = _muted(rng, (0.0, 0.35), (0.2, 0.95))
        x, y = rng.uniform(0, IMAGE_SIZE), rng.uniform(0, IMAGE_SIZE)
        if rng.random() < 0.5:
            w, h = rng.uniform(4, 14), rng.uniform(4, 14)
            draw.ellipse([x - w, y - h, x + w, y + h], fill=fill)
        else:
            length, angle = rng.uniform(20, 70), rng.uniform(0, 2 * np.pi)
            end = (x + length * np.cos(angle), y + length * np.sin(angle))
            draw.line([(x, y), end], fill=fill, width=rng.randint(2, 4))


def draw_object(rng: random.Random, draw: ImageDraw.ImageDraw, obj: SceneObject) -> None:
    r = rng.randint(*OBJECT_HALF_SIZE)
    margin = r + 4  # wholly inside its own cell, so "the shape in the top left" is unambiguous
    cx = obj.col * CELL + rng.randint(margin, CELL - margin)
    cy = obj.row * CELL + rng.randint(margin, CELL - margin)
    fill = COLORS[obj.color]
    if obj.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif obj.shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)


def make_scene(seed: int) -> Scene:
    """2-5 objects in distinct cells (the count uniform, so count answers are balanced) over clutter and texture."""
    rng = random.Random(seed)
    count = rng.randint(MIN_OBJECTS, MAX_OBJECTS)
    cells = rng.sample(range(GRID * GRID), count)
    objects = [SceneObject(c // GRID, c % GRID, rng.choice(list(COLORS)), rng.choice(SHAPES)) for c in cells]
    image = draw_background(rng)
    draw_clutter(rng, image)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        draw_object(rng, draw, obj)
    return Scene(seed, tuple(objects), image.filter(ImageFilter.SMOOTH))


@lru_cache(maxsize=1024)  # both benchmark splits (500 scenes each)
def scene_image(seed: int) -> Image.Image:
    """The image of scene ``seed``, drawn once per process: the benchmark's docs store seeds, and a sweep asks for
    every doc's image once per point. The cache lives here, not in the task's ``utils.py``, because lmms-eval loads a
    task's utils module afresh each time it builds the task, which a sweep does at every point."""
    return make_scene(seed).image


# ----- questions --------------------------------------------------------------------------------------------------


def _relation_candidates(scene: Scene) -> list[tuple[str, SceneObject, SceneObject]]:
    """(relation, named object, asked object) for neighbouring pairs where the named object is unique in the scene,
    so "the red circle" refers to exactly one thing."""
    descriptions = [(o.color, o.shape) for o in scene.objects]
    out = []
    for ref in scene.objects:
        if descriptions.count((ref.color, ref.shape)) != 1:
            continue
        for relation, (dr, dc) in RELATIONS.items():
            target = scene.at(ref.row + dr, ref.col + dc)
            if target is not None:
                out.append((relation, ref, target))
    return out


def _existence(scene: Scene, rng: random.Random, present: bool) -> Question:
    described = {(o.color, o.shape) for o in scene.objects}
    if present:
        color, shape = rng.choice(sorted(described))
    else:
        absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in described]
        # POPE's "adversarial" half: an absent object that shares its colour or shape with one that is there.
        near = [(c, s) for c, s in absent if any(c == dc or s == ds for dc, ds in described)]
        color, shape = rng.choice(near if near and rng.random() < 0.5 else absent)
    return Question("existence", f"Is there a {color} {shape}?", "yes" if present else "no")


def make_question(scene: Scene, kind: str, rng: random.Random) -> Question | None:
    """One question of ``kind`` about ``scene``, or None when the scene cannot carry it (no neighbouring pair with a
    uniquely described object, for ``relation``)."""
    asks_color = rng.random() < 0.5
    if kind == "attribute":
        obj = rng.choice(scene.objects)
        where = position_name(obj.row, obj.col)
        if asks_color:
            return Question(kind, f"What color is the shape in the {where}?", obj.color)
        return Question(kind, f"What shape is in the {where}?", obj.shape)
    if kind == "existence":
        return _existence(scene, rng, present=rng.random() < 0.5)
    if kind == "count":
        return Question(kind, "How many shapes are there?", COUNT_WORDS[len(scene.objects)])
    if kind != "relation":
        raise ValueError(f"kind={kind!r}; accepted values: {', '.join(KINDS)}")
    candidates = _relation_candidates(scene)
    if not candidates:
        return None
    relation, ref, target = rng.choice(candidates)
    if asks_color:
        return Question(kind, f"What color is the shape {relation} the {ref.color} {ref.shape}?", target.color)
    return Question(kind, f"What shape is {relation} the {ref.color} {ref.shape}?", target.shape)


def describe(scene: Scene) -> Question:
    """Every object in reading order, e.g. "top left red circle, center blue square": a caption for training only.

    Like the captions LLaVA aligns its projector with, it supervises every object's position, colour and shape in
    one answer, which teaches the language model where each visual token sits far faster than one-word answers."""
    objects = sorted(scene.objects, key=lambda o: o.cell)
    text = ", ".join(f"{position_name(o.row, o.col)} {o.color} {o.shape}" for o in objects)
    return Question("describe", "Describe the image.", text)


def make_example(seed: int, per_kind: int = 2) -> tuple[Scene, list[Question]]:
    """A training conversation: a scene, ``per_kind`` questions of each kind in a seeded random order, and its
    description last (earlier, it would let later answers be copied from the text instead of read from the image).
    Existence questions come in pairs, one present and one absent object; a question drawn twice is asked once."""
    scene = make_scene(seed)
    rng = random.Random(seed ^ 0x5EED)
    questions = [q for kind in KINDS for _ in range(per_kind) if (q := make_question(scene, kind, rng)) is not None]
    questions += [_existence(scene, rng, present) for present in (True, False)]
    questions = list({q.text: q for q in questions}.values())
    rng.shuffle(questions)
    return scene, questions + [describe(scene)]


def make_docs(first_seed: int, num_docs: int) -> list[tuple[Scene, Question]]:
    """One question per scene, the kinds in turn so each is equally represented; seeds count up from ``first_seed``,
    skipping a scene that cannot carry the kind due (no neighbouring pair for a relation)."""
    docs: list[tuple[Scene, Question]] = []
    seed = first_seed
    while len(docs) < num_docs:
        kind = KINDS[len(docs) % len(KINDS)]
        scene = make_scene(seed)
        question = make_question(scene, kind, random.Random(seed ^ 0x5EED))
        seed += 1
        if question is not None:
            docs.append((scene, question))
    return docs


def make_dev_docs(num_docs: int) -> list[tuple[Scene, Question]]:
    """The dev split (``fopru_demo_dev``): seeds from ``DEV_SEED_OFFSET``; every choice is made on it."""
    return make_docs(DEV_SEED_OFFSET, num_docs)


def make_test_docs(num_docs: int) -> list[tuple[Scene, Question]]:
    """The held-out benchmark (``fopru_demo``): seeds from ``TEST_SEED_OFFSET``, read only for the final table."""
    return make_docs(TEST_SEED_OFFSET, num_docs)

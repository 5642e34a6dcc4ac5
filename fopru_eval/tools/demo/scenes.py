"""Synthetic scenes for the demo: a few small coloured shapes on a 3 x 3 grid, and questions about where they are.

Every scene is drawn from one integer seed, so the same seed always gives the same pixels, layout and questions.
The training script uses seeds below ``TEST_SEED_OFFSET``; the shipped test set uses seeds from it upwards, so the
two never share a scene seed.

The questions are built so that the answer depends on *where* things are: an answer about one cell, a count over
all the objects, or a relation between two neighbouring objects ("left of", "right of", "above", "below" mean the
adjacent cell in that direction, and the named object is the only one of its colour and shape). Each object covers
only a few of the 8 x 8 patches, so a pruning method that drops the patches of the object a question needs loses
the answer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

IMAGE_SIZE = 96  # pixels; with 12-pixel patches the vision tower sees 8 x 8 = 64 patch tokens
GRID = 3  # cells per side; each cell is 32 x 32 pixels and holds at most one object
CELL = IMAGE_SIZE // GRID
MIN_OBJECTS, MAX_OBJECTS = 2, 5

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
QUESTION_KINDS = ("color_at", "shape_at", "count", "relation_color", "relation_shape")

TEST_SEED_OFFSET = 1_000_000_000  # test scenes use seeds >= this; training scenes use seeds below it
# Dev scenes (choices such as the default scorer are made on these, never on the test split): the seeds training uses
# for its progress reports only, never to train on.
DEV_SEED_OFFSET = 900_000_000


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
    """'top left', 'top center', ..., 'center', ..., 'bottom right' (the names fopru_shapes uses)."""
    return "center" if (row, col) == (1, 1) else f"{ROWS[row]} {COLS[col]}"


def vocabulary() -> list[str]:
    """Every word the questions and answers use, so the demo tokenizer gives each a token of its own."""
    texts = [f"What color is the shape in the {position_name(r, c)}?" for r in range(GRID) for c in range(GRID)]
    texts += [f"What shape is {rel} the {c} {s}?" for rel in RELATIONS for c in COLORS for s in SHAPES]
    texts += ["How many shapes are there?", "Describe the image.", ","]
    # Answers follow "ASSISTANT:" after a space, so they are learned as space-led words (" red").
    texts += [" " + " ".join(words) for words in (COUNT_WORDS.values(), COLORS, SHAPES)]
    return texts


def draw_scene(rng: random.Random, objects: list[SceneObject]) -> Image.Image:
    """Draw the objects, each small (14-20 px across) and jittered inside its cell, on a plain light background."""
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (rng.randint(235, 255),) * 3)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        r = rng.randint(7, 10)  # half size
        margin = r + 2  # keeps every object wholly inside its own cell, so "the shape in the top left" is unambiguous
        cx = obj.col * CELL + rng.randint(margin, CELL - margin)
        cy = obj.row * CELL + rng.randint(margin, CELL - margin)
        fill = COLORS[obj.color]
        if obj.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif obj.shape == "square":
            draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return image


def make_scene(seed: int) -> Scene:
    """2-5 objects in distinct cells; the number of objects is uniform so that count answers are balanced."""
    rng = random.Random(seed)
    count = rng.randint(MIN_OBJECTS, MAX_OBJECTS)
    cells = rng.sample(range(GRID * GRID), count)
    objects = [SceneObject(c // GRID, c % GRID, rng.choice(list(COLORS)), rng.choice(SHAPES)) for c in cells]
    return Scene(seed, tuple(objects), draw_scene(rng, objects))


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


def make_question(scene: Scene, kind: str, rng: random.Random) -> Question | None:
    """One question of ``kind`` about ``scene``, or None when the scene cannot support it (no neighbouring pair)."""
    if kind in ("color_at", "shape_at"):
        obj = rng.choice(scene.objects)
        where = position_name(obj.row, obj.col)
        if kind == "color_at":
            return Question(kind, f"What color is the shape in the {where}?", obj.color)
        return Question(kind, f"What shape is in the {where}?", obj.shape)
    if kind == "count":
        return Question(kind, "How many shapes are there?", COUNT_WORDS[len(scene.objects)])
    candidates = _relation_candidates(scene)
    if not candidates:
        return None
    relation, ref, target = rng.choice(candidates)
    if kind == "relation_color":
        return Question(kind, f"What color is the shape {relation} the {ref.color} {ref.shape}?", target.color)
    return Question(kind, f"What shape is {relation} the {ref.color} {ref.shape}?", target.shape)


def describe(scene: Scene) -> Question:
    """Every object in reading order, e.g. "top left red circle, center blue square": a caption for training only.

    Like the captions LLaVA aligns its projector with, it supervises every object's position, colour and shape in
    one answer, which teaches the language model where each visual token sits far faster than one-word answers."""
    objects = sorted(scene.objects, key=lambda o: o.cell)
    text = ", ".join(f"{position_name(o.row, o.col)} {o.color} {o.shape}" for o in objects)
    return Question("describe", "Describe the image.", text)


def make_example(seed: int, kinds: tuple[str, ...] = QUESTION_KINDS) -> tuple[Scene, list[Question]]:
    """A training conversation: a scene, one question of each kind in ``kinds`` in a seeded random order, and its
    description last (earlier, it would let later answers be copied from the text instead of read from the image).
    Relation kinds are skipped when no neighbouring pair has a uniquely described object."""
    scene = make_scene(seed)
    rng = random.Random(seed ^ 0x5EED)
    questions = [q for kind in kinds if (q := make_question(scene, kind, rng)) is not None]
    questions = list({q.text: q for q in questions}.values())  # a kind asked twice may draw the same question
    rng.shuffle(questions)
    return scene, questions + [describe(scene)]


def make_docs(first_seed: int, num_docs: int) -> list[tuple[Scene, Question]]:
    """One question per scene, question kinds in turn so each is equally represented; seeds count up from
    ``first_seed``, skipping a scene that cannot carry the kind due (no neighbouring pair)."""
    docs: list[tuple[Scene, Question]] = []
    seed = first_seed
    while len(docs) < num_docs:
        kind = QUESTION_KINDS[len(docs) % len(QUESTION_KINDS)]
        scene = make_scene(seed)
        question = make_question(scene, kind, random.Random(seed ^ 0x5EED))
        seed += 1
        if question is not None:
            docs.append((scene, question))
    return docs


def make_dev_docs(num_docs: int) -> list[tuple[Scene, Question]]:
    """The dev split (tasks/fopru_demo, fopru_demo_dev): seeds from ``DEV_SEED_OFFSET``."""
    return make_docs(DEV_SEED_OFFSET, num_docs)


def make_test_docs(num_docs: int) -> list[tuple[Scene, Question]]:
    """The held-out benchmark (tasks/fopru_demo): seeds from ``TEST_SEED_OFFSET``, which training never draws."""
    return make_docs(TEST_SEED_OFFSET, num_docs)

"""Shared fixtures: everything offline, on the CPU, with tiny models built from configs."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from fopru_eval.random_llava import save_random_llava  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASKS_DIR = REPO / "tasks"


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

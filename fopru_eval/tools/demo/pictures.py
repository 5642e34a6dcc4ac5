"""What each method keeps, drawn: one scene, the patches a method keeps at full brightness and those it drops dimmed.

The kept patches come from the package's own path (the family's ``encode_images`` under the method's scorer, then the
driver's ``keep_image``), with the doc key lmms-eval's run gives the doc, so ``random`` draws the same tokens as in
the sweep. Works for LLaVA-1.5-geometry models, whose packed positions are the patches in raster order.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from PIL import Image, ImageDraw

from fopru_eval.core.config import PruningConfig
from fopru_eval.families.driver import keep_image, tower_reads, view_inputs
from fopru_eval.families.llava import Llava

CAPTION = 30  # pixels of caption under each panel
DIMMED = 0.25  # brightness of dropped patches


def kept_patches(family: Llava, config: PruningConfig, image: Image.Image, question: str, doc_key: str) -> list[int]:
    """Raster indices of the patches ``config`` keeps of ``image`` asked ``question``, as the adapter would keep them
    for the doc ``doc_key``."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = family.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    encoded = family.processor(images=[image], text=[text], return_tensors="pt")
    vision = family.encode_images(encoded, config.scorer if config.needs_scores else None, tower_reads(family, config))
    scores = vision.scores[0] if vision.scores is not None else None
    positions, _ = keep_image(config, vision.layouts[0], scores, doc_key, 0, partial(view_inputs, vision, 0))
    return positions.tolist()


def draw_kept(image: Image.Image, patches: list[int], patch_size: int, caption: str) -> Image.Image:
    """``image`` with every patch not in ``patches`` dimmed, and ``caption`` under it."""
    grid = image.width // patch_size
    dimmed = Image.eval(image, lambda value: int(value * DIMMED))
    mask = Image.new("L", image.size, 0)
    draw_mask = ImageDraw.Draw(mask)
    for patch in patches:
        row, col = divmod(patch, grid)
        left, top = col * patch_size, row * patch_size
        draw_mask.rectangle([left, top, left + patch_size - 1, top + patch_size - 1], fill=255)
    panel = Image.new("RGB", (image.width, image.height + CAPTION), "white")
    panel.paste(Image.composite(image, dimmed, mask), (0, 0))
    ImageDraw.Draw(panel).text((4, image.height + 4), caption, fill="black")
    return panel


def write_kept_pictures(
    family: Llava,
    configs: dict[str, PruningConfig],
    image: Image.Image,
    question: str,
    doc_key: str,
    path: Path,
    columns: int = 3,
) -> Path:
    """One panel per method (``configs``: label -> config) plus the scene itself, in a grid, saved at ``path``."""
    patch_size = family.model.config.vision_config.patch_size
    total = (image.width // patch_size) ** 2
    panels = [draw_kept(image, list(range(total)), patch_size, f"the scene: {question}")]
    for label, config in configs.items():
        patches = kept_patches(family, config, image, question, doc_key)
        panels.append(draw_kept(image, patches, patch_size, f"{label}: {len(patches)} of {total} kept"))
    rows = -(-len(panels) // columns)
    width, height = panels[0].size
    sheet = Image.new("RGB", (columns * width, rows * height), "white")
    for index, panel in enumerate(panels):
        sheet.paste(panel, ((index % columns) * width, (index // columns) * height))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path

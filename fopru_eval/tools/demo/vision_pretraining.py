"""Stage 1 of the demo's training (``train.py``): pretrain the CLIP vision tower on the scenes, as LLaVA's tower
comes pretrained.

A linear head on the pooled CLS output predicts, for each of the 9 grid cells, which shape (or nothing) and which
colour (or nothing) is there. The CLS token can only do that by attending to the few patches that hold objects among
the textured background and clutter, which is the attention FoPru reads. Optional dense heads on the patch tokens
(``TrainConfig.patch_loss`` and ``cell_loss``) make what covers a patch, and where it is, linear in the features the
LLM will read. The heads are thrown away; the tower is then frozen for stage 2.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from fopru_eval.tools.demo import scenes

if TYPE_CHECKING:
    from fopru_eval.tools.demo.train import TrainConfig

PATCH_SIZE = scenes.PATCH_SIZE
PATCH_CLASSES = ("color", "object")


def pixels(processor: LlavaProcessor, images: list[Image.Image]) -> torch.Tensor:
    return processor.image_processor(images=images, return_tensors="pt")["pixel_values"]


def cosine_lr(step: int, steps: int, peak: float) -> float:
    """Linear warm-up over the first 5% of steps, then cosine decay to zero: stable from-scratch training."""
    warmup = max(1, steps // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def optimizer_step(
    optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], loss: torch.Tensor, lr: float
) -> None:
    """One step of both stages: learning rate ``lr``, gradients of ``loss`` clipped to norm 1."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()


def cell_labels(scene: scenes.Scene) -> tuple[list[int], list[int]]:
    """Per cell: shape index and colour index, 0 meaning an empty cell."""
    shapes, colors = [0] * scenes.GRID**2, [0] * scenes.GRID**2
    for obj in scene.objects:
        shapes[obj.cell] = 1 + scenes.SHAPES.index(obj.shape)
        colors[obj.cell] = 1 + list(scenes.COLORS).index(obj.color)
    return shapes, colors


def patch_labels(scene: scenes.Scene, classes: str) -> list[int]:
    """Per patch in raster order, 0 where no object colour covers a fifth of it, else its class: the object's colour
    index + 1 (``classes="color"``) or colour and shape together, 1 + colour * shapes + shape (``"object"``)."""
    array = np.asarray(scene.image, dtype=np.int16)
    grid = scenes.IMAGE_SIZE // PATCH_SIZE
    per_cell = grid // scenes.GRID  # 8 patches a cell side: a patch never straddles two cells
    labels = np.zeros((grid, grid), dtype=np.int64)
    for index, rgb in enumerate(scenes.COLORS.values()):
        # Object interiors keep their exact colour through the scene's smoothing; textures never hit it exactly.
        covered = (np.abs(array - np.array(rgb)).max(-1) <= 2).reshape(grid, PATCH_SIZE, grid, PATCH_SIZE)
        labels[covered.mean((1, 3)) >= 0.2] = index + 1
    if classes == "object":
        for row, col in zip(*labels.nonzero(), strict=True):
            obj = scene.at(row // per_cell, col // per_cell)
            color = list(scenes.COLORS).index(obj.color) if obj is not None else labels[row, col] - 1
            shape = scenes.SHAPES.index(obj.shape) if obj is not None else 0
            labels[row, col] = 1 + color * len(scenes.SHAPES) + shape
    return labels.flatten().tolist()


def patch_cells() -> torch.Tensor:
    """The grid cell of every patch, in raster order."""
    grid = scenes.IMAGE_SIZE // PATCH_SIZE
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    per_cell = grid // scenes.GRID
    return ((rows // per_cell) * scenes.GRID + cols // per_cell).flatten()


def num_patch_classes(classes: str) -> int:
    return 1 + len(scenes.COLORS) * (len(scenes.SHAPES) if classes == "object" else 1)


def vision_batch(processor: LlavaProcessor, seeds: range, classes: str = "color") -> tuple[torch.Tensor, ...]:
    """Pixels, per-cell shape and colour labels, and per-patch labels (``patch_labels``) of the scenes ``seeds``."""
    batch = [scenes.make_scene(seed) for seed in seeds]
    labels = [cell_labels(scene) for scene in batch]
    shapes = torch.tensor([s for s, _ in labels])
    colors = torch.tensor([c for _, c in labels])
    patches = torch.tensor([patch_labels(scene, classes) for scene in batch])
    return pixels(processor, [scene.image for scene in batch]), shapes, colors, patches


class CellHead(torch.nn.Module):
    """Pooled CLS -> per-cell shape and colour logits. Used only to pretrain the ViT, then discarded."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.cells = scenes.GRID**2
        self.shape = torch.nn.Linear(hidden, self.cells * (1 + len(scenes.SHAPES)))
        self.color = torch.nn.Linear(hidden, self.cells * (1 + len(scenes.COLORS)))

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.shape(pooled).view(-1, self.cells, 1 + len(scenes.SHAPES)), self.color(pooled).view(
            -1, self.cells, 1 + len(scenes.COLORS)
        )


def sincos_positions(grid: int, dim: int) -> torch.Tensor:
    """2-D sine-cosine position embeddings (as in MAE) for the CLS token (zeros) and a grid x grid patch layout."""
    quarter = dim // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    angles = [coord.flatten()[:, None].float() * frequencies for coord in (rows, cols)]
    patches = torch.cat([f(a) for a in angles for f in (torch.sin, torch.cos)], dim=1)
    return torch.cat([torch.zeros(1, dim), patches])


def pretrain_vision(model: LlavaForConditionalGeneration, processor: LlavaProcessor, cfg: TrainConfig) -> float:
    """Train the CLIP tower and a per-cell head on the CLS token; return the head's per-cell accuracy on unseen
    scenes (shape and colour both right)."""
    tower = model.model.vision_tower
    # CLIP initialises position embeddings at std 0.02, tiny next to the patch content at this width: every empty
    # patch then looks the same, and a width-64 run sat at "all cells empty" for 1200 steps. Starting from
    # sine-cosine positions (still trained) makes "where" visible from step 0; the same run then learned.
    grid = scenes.IMAGE_SIZE // PATCH_SIZE
    with torch.no_grad():
        tower.embeddings.position_embedding.weight.copy_(sincos_positions(grid, cfg.vision_hidden))
    head = CellHead(cfg.vision_hidden)
    params = list(tower.parameters()) + list(head.parameters())
    if cfg.patch_loss:
        patch_head = torch.nn.Linear(cfg.vision_hidden, num_patch_classes(cfg.patch_classes))
        params += list(patch_head.parameters())
    if cfg.cell_loss:
        cell_head = torch.nn.Linear(cfg.vision_hidden, scenes.GRID**2)
        params += list(cell_head.parameters())
        cells = patch_cells().repeat(cfg.vision_batch)
    optimizer = torch.optim.AdamW(params, lr=cfg.vision_lr, weight_decay=0.01)
    # Held out: seeds the stage never draws (just below the language stage's range).
    heldout = vision_batch(processor, range(scenes.LANGUAGE_SEED_OFFSET - 512, scenes.LANGUAGE_SEED_OFFSET))
    for step in range(cfg.vision_steps):
        tower.train()
        start = scenes.VISION_SEED_OFFSET + step * cfg.vision_batch
        seeds = range(start, start + cfg.vision_batch)
        images, shapes, colors, patch_targets = vision_batch(processor, seeds, cfg.patch_classes)
        output = tower(pixel_values=images, output_hidden_states=True)
        shape_logits, color_logits = head(output.pooler_output)
        loss = F.cross_entropy(shape_logits.flatten(0, 1), shapes.flatten()) + F.cross_entropy(
            color_logits.flatten(0, 1), colors.flatten()
        )
        patch_tokens = output.hidden_states[cfg.patch_layer][:, 1:].flatten(0, 1)
        if cfg.patch_loss:
            loss = loss + cfg.patch_loss * F.cross_entropy(patch_head(patch_tokens), patch_targets.flatten())
        if cfg.cell_loss:
            loss = loss + cfg.cell_loss * F.cross_entropy(cell_head(patch_tokens), cells)
        optimizer_step(optimizer, params, loss, cosine_lr(step, cfg.vision_steps, cfg.vision_lr))
        if step % 100 == 0 or step == cfg.vision_steps - 1:
            accuracy = cell_accuracy(tower, head, heldout)
            print(f"vision step {step:5d}  loss {loss.item():.4f}  held-out cell accuracy {accuracy:.3f}", flush=True)
    tower.eval()
    return accuracy


@torch.no_grad()
def cell_accuracy(tower: torch.nn.Module, head: CellHead, batch: tuple[torch.Tensor, ...]) -> float:
    """Fraction of cells whose shape and colour (or emptiness) the CLS head gets both right."""
    tower.eval()
    images, shapes, colors, _ = batch
    shape_logits, color_logits = head(tower(pixel_values=images).pooler_output)
    return ((shape_logits.argmax(-1) == shapes) & (color_logits.argmax(-1) == colors)).float().mean().item()

"""LLaVA-NeXT's anyres token layout: which of an image's LLM tokens is which, and which survive pruning.

LLaVA-NeXT feeds the LLM one image as a *packed* sequence of two parts:

    base view   h x w tokens in raster order: the whole image resized to the tower's resolution (no newlines)
    mosaic      R rows of C tokens, each row followed by one ``image_newline`` token: the crops of a higher-resolution
                copy stitched back into one patch grid, less the rows or columns that only covered padding (the
                "unpadded" grid, rarely square)

FoPru selects on the two parts separately, as two views, each on its own grid (``h x w`` and ``R x C``); a crop's
tokens are scored by the attention inside that crop. Pure tensor code: the adapter tells it where each packed token
comes from (``AnyresLayout.from_sources``) and which tokens each view keeps.

Newline rule. Newlines are layout markers, not content: they are never counted as visual tokens and never selected
or scored. A row's newline stays exactly when the row keeps at least one visual token, so the LLM still sees where
each surviving row ends, and a fully pruned row leaves no trace. Hence ``none`` keeps every newline, ``row`` keeps the
newline of every kept row, and ``rank`` keeps the newlines of the rows it touches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# The source id of an ``image_newline`` token in a layout's ``sources``.
NEWLINE = -1


@dataclass(frozen=True)
class View:
    """One unit of selection: tokens on a (rows, cols) grid in raster order."""

    grid: tuple[int, int]
    # Where each of the view's tokens sits in the packed sequence, in raster order of the grid.
    positions: torch.Tensor
    # Which tower token each one is: tower_view * tokens_per_tower_view + patch, to look up its significance.
    sources: torch.Tensor


@dataclass(frozen=True)
class AnyresLayout:
    """The packed tokens of one LLaVA-NeXT image: the base view, then the unpadded mosaic with a newline per row."""

    base: View
    mosaic: View

    @classmethod
    def from_sources(cls, sources: torch.Tensor, base_grid: tuple[int, int]) -> AnyresLayout:
        """Read the layout from ``sources``: for each packed token, the tower token it comes from, or ``NEWLINE``.

        The first ``h * w`` packed tokens must be the base view's (sources 0 .. h*w - 1); the rest must be rows of
        equal length, each ended by exactly one newline.
        """
        base_tokens = base_grid[0] * base_grid[1]
        sources = sources.long().cpu()
        if not torch.equal(sources[:base_tokens], torch.arange(base_tokens)):
            raise ValueError(f"the packed sequence does not start with the {base_grid} base view in raster order")
        rest = sources[base_tokens:]
        rows = int((rest == NEWLINE).sum())
        if rows == 0 or rest.numel() % rows or rest.numel() // rows < 2:
            raise ValueError(
                f"the mosaic of {rest.numel()} packed tokens is not rows of tokens, each ending in a newline"
            )
        by_row = rest.view(rows, -1)
        if not bool((by_row[:, -1] == NEWLINE).all()):
            raise ValueError("the mosaic's newlines do not end its rows")
        cols = by_row.shape[1] - 1
        mosaic_positions = base_tokens + torch.arange(rows).unsqueeze(1) * (cols + 1) + torch.arange(cols)
        base = View(base_grid, torch.arange(base_tokens), sources[:base_tokens])
        mosaic = View((rows, cols), mosaic_positions.flatten(), by_row[:, :-1].flatten())
        return cls(base, mosaic)

    @property
    def views(self) -> tuple[View, View]:
        return self.base, self.mosaic

    @property
    def num_visual_tokens(self) -> int:
        return self.base.positions.numel() + self.mosaic.positions.numel()

    @property
    def num_newlines(self) -> int:
        return self.mosaic.grid[0]

    @property
    def num_packed_tokens(self) -> int:
        """The LLM tokens of the unpruned image: visual tokens plus newlines."""
        return self.num_visual_tokens + self.num_newlines

    def newline_position(self, row: torch.Tensor) -> torch.Tensor:
        """Packed position of the newline that ends each mosaic ``row``."""
        rows, cols = self.mosaic.grid
        return self.base.positions.numel() + row * (cols + 1) + cols

    def kept_positions(self, base_kept: torch.Tensor, mosaic_kept: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Packed positions that survive, sorted, given each view's kept indices (into its raster order); and how
        many newlines survive among them.

        A newline survives exactly when its row keeps at least one visual token (the module's newline rule).
        """
        base_kept, mosaic_kept = base_kept.cpu(), mosaic_kept.cpu()
        kept_rows = torch.unique(mosaic_kept // self.mosaic.grid[1])
        positions = torch.cat(
            [self.base.positions[base_kept], self.mosaic.positions[mosaic_kept], self.newline_position(kept_rows)]
        )
        return positions.sort().values, kept_rows.numel()

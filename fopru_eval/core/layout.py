"""Where an image's LLM tokens come from: views to select on, and layout tokens that follow the rows they end.

Every family feeds the LLM one image as a run of packed tokens (one placeholder each in ``input_ids``). The layout of
that run is what selection needs to know:

    views          units of selection, each a (rows, cols) grid in raster order; for each of a view's tokens, its
                   position in the packed run and its *source*, the index of its score in the image's significance
    row markers    layout tokens that are not content (LLaVA-NeXT's ``image_newline`` after every mosaic row): never
                   scored, selected or counted as visual tokens

A single-view image (LLaVA-1.5, Qwen-VL) is ``ImageLayout.single(grid)``. LLaVA-NeXT's anyres image is two views, the
base view and the unpadded crop mosaic (``AnyresLayout.from_sources``), and a crop's tokens are scored by the attention
inside that crop. LLaVA-OneVision may also shrink the mosaic by bilinear interpolation, so a packed token can blend
several tower tokens: its significance is packed alongside the features, and each token's source is its own packed
position (``AnyresLayout.from_markers``).

Marker rule. A row's marker stays exactly when the row keeps at least one visual token, so the LLM still sees where
each surviving row ends, and a fully pruned row leaves no trace. Hence ``none`` keeps every marker, ``row`` keeps the
marker of every kept row, and ``rank`` keeps the markers of the rows it touches.

Pure tensor code: the family tells it where each packed token comes from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# The source id of an ``image_newline`` token in an anyres layout's ``sources``.
NEWLINE = -1


@dataclass(frozen=True)
class View:
    """One unit of selection: tokens on a (rows, cols) grid in raster order."""

    grid: tuple[int, int]
    # Where each of the view's tokens sits in the packed run, in raster order of the grid.
    positions: torch.Tensor
    # Which score each one has: its index in the image's (flattened) significance.
    sources: torch.Tensor

    @classmethod
    def raster(cls, grid: tuple[int, int], first_position: int = 0) -> View:
        tokens = torch.arange(grid[0] * grid[1])
        return cls(grid, first_position + tokens, tokens)


@dataclass(frozen=True)
class ImageLayout:
    """The packed tokens of one image: its views, and the markers that end the rows of one of them."""

    views: tuple[View, ...]
    # Packed position of the marker that ends each row of ``views[marked_view]``; empty if there are none.
    row_markers: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    marked_view: int = 0
    # Packed positions of markers that end rows holding no visual token (a mosaic that unpadding left 0 tokens wide):
    # no selection can empty such a row, so, as in the unpruned model, they always stay.
    fixed_markers: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))

    @classmethod
    def single(cls, grid: tuple[int, int]) -> ImageLayout:
        """One view whose tokens are the whole packed run, scores in the same raster order."""
        return cls((View.raster(grid),))

    @classmethod
    def stacked(cls, grid: tuple[int, int], count: int, fixed_markers: torch.Tensor | None = None) -> ImageLayout:
        """``count`` views of ``grid`` one after another (a video's frames), each in raster order, with the scores of
        all of them concatenated in the same order; ``fixed_markers`` are packed positions that always stay."""
        tokens = grid[0] * grid[1]
        views = []
        for index in range(count):
            positions = index * tokens + torch.arange(tokens)
            views.append(View(grid, positions, positions))
        if fixed_markers is None:
            return cls(tuple(views))
        return cls(tuple(views), fixed_markers=fixed_markers)

    @property
    def num_visual_tokens(self) -> int:
        return sum(view.positions.numel() for view in self.views)

    @property
    def num_markers(self) -> int:
        return self.row_markers.numel() + self.fixed_markers.numel()

    @property
    def num_packed_tokens(self) -> int:
        """The LLM tokens of the unpruned image: visual tokens plus markers."""
        return self.num_visual_tokens + self.num_markers

    def kept_positions(self, *kept: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Packed positions that survive, sorted, given each view's kept indices (into its raster order), one tensor
        per view; and how many markers survive among them (the module's marker rule)."""
        kept = [indices.cpu() for indices in kept]
        positions = [view.positions[indices] for view, indices in zip(self.views, kept, strict=True)]
        positions.append(self.fixed_markers)
        markers = self.fixed_markers.numel()
        if self.row_markers.numel():
            kept_rows = torch.unique(kept[self.marked_view] // self.views[self.marked_view].grid[1])
            positions.append(self.row_markers[kept_rows])
            markers += kept_rows.numel()
        return torch.cat(positions).sort().values, markers


class AnyresLayout(ImageLayout):
    """LLaVA-NeXT's and LLaVA-OneVision's packed image: the base view (h x w, no newlines), then the unpadded (and, in
    OneVision, perhaps interpolated) crop mosaic (R rows of C tokens, each row followed by one ``image_newline``).

    On very wide or tall images unpadding can leave the mosaic 0 rows high (nothing follows the base view) or 0 tokens
    wide (R newlines and nothing else); the model still answers, so the layout is then the base view alone, plus those
    newlines as fixed markers."""

    @classmethod
    def from_sources(cls, sources: torch.Tensor, base_grid: tuple[int, int]) -> AnyresLayout:
        """Read the layout from ``sources``: for each packed token, the tower token it comes from
        (view * tokens_per_view + patch), or ``NEWLINE``.

        The first ``h * w`` packed tokens must be the base view's (sources 0 .. h*w - 1); the rest must be rows of
        equal length, each ended by exactly one newline.
        """
        base_tokens = base_grid[0] * base_grid[1]
        sources = sources.long().cpu()
        if not torch.equal(sources[:base_tokens], torch.arange(base_tokens)):
            raise ValueError(f"the packed sequence does not start with the {base_grid} base view in raster order")
        return cls._read(sources == NEWLINE, sources, base_grid)

    @classmethod
    def from_markers(cls, markers: torch.Tensor, base_grid: tuple[int, int]) -> AnyresLayout:
        """Read the layout from ``markers`` (True for each packed newline), for an image whose significance is packed
        like its features: every token's source is its own packed position.

        The first ``h * w`` packed tokens must be the base view's; the rest must be rows of equal length, each ended by
        exactly one newline (or newlines alone).
        """
        markers = markers.bool().cpu()
        base_tokens = base_grid[0] * base_grid[1]
        if markers.numel() < base_tokens or bool(markers[:base_tokens].any()):
            raise ValueError(f"the packed sequence does not start with the {base_grid} base view")
        return cls._read(markers, torch.arange(markers.numel()), base_grid)

    @classmethod
    def _read(cls, markers: torch.Tensor, sources: torch.Tensor, base_grid: tuple[int, int]) -> AnyresLayout:
        """The base view, then the mosaic's rows read off the newline ``markers``; ``sources`` per packed token."""
        base_tokens = base_grid[0] * base_grid[1]
        base = View(base_grid, torch.arange(base_tokens), sources[:base_tokens])
        rest, rest_markers = sources[base_tokens:], markers[base_tokens:]
        if bool(rest_markers.all()):  # a mosaic of no tokens: 0 rows, or rows 0 tokens wide
            return cls((base,), fixed_markers=base_tokens + torch.arange(rest.numel()))
        rows = int(rest_markers.sum())
        if rows == 0 or rest.numel() % rows:
            raise ValueError(
                f"the mosaic of {rest.numel()} packed tokens is not rows of tokens, each ending in a newline"
            )
        by_row, markers_by_row = rest.view(rows, -1), rest_markers.view(rows, -1)
        if not bool(markers_by_row[:, -1].all()):
            raise ValueError("the mosaic's newlines do not end its rows")
        cols = by_row.shape[1] - 1
        row_starts = base_tokens + torch.arange(rows).unsqueeze(1) * (cols + 1)
        mosaic = View((rows, cols), (row_starts + torch.arange(cols)).flatten(), by_row[:, :-1].flatten())
        return cls((base, mosaic), row_markers=row_starts.flatten() + cols, marked_view=1)

    @property
    def base(self) -> View:
        return self.views[0]

    @property
    def mosaic(self) -> View | None:
        """None where unpadding left no mosaic tokens."""
        return self.views[1] if len(self.views) > 1 else None

    @property
    def num_newlines(self) -> int:
        return self.num_markers

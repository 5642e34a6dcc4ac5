"""Token sequences after pruning: drop the placeholders of pruned visual tokens, then pad the batch again.

Processors expand each image placeholder into one id per visual token, so the LLM input must lose exactly the ids
of the tokens we drop. Sequences are found from ``input_ids`` themselves, never from hard-coded offsets.
"""

from __future__ import annotations

import torch


def unpad(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
    """The real tokens of each row of a padded batch."""
    return [ids[mask.bool()] for ids, mask in zip(input_ids, attention_mask, strict=True)]


def kept_token_mask(
    ids: torch.Tensor, placeholder_id: int, kept: list[torch.Tensor], tokens_per_image: list[int]
) -> torch.Tensor:
    """Which tokens of one unpadded sequence stay: every text token, and the placeholders of kept visual tokens.

    The sequence's placeholders belong to its images in order: the first ``tokens_per_image[0]`` to the first
    image, and so on. ``kept[i]`` holds the indices (within image i) of the tokens that stay.
    """
    positions = (ids == placeholder_id).nonzero().flatten()
    if positions.numel() != sum(tokens_per_image):
        raise ValueError(
            f"the sequence has {positions.numel()} image placeholders, but its images have "
            f"{sum(tokens_per_image)} visual tokens"
        )
    keep = ids != placeholder_id
    offset = 0
    for indices, count in zip(kept, tokens_per_image, strict=True):
        keep[positions[offset + indices.to(positions.device)]] = True
        offset += count
    return keep


def surviving_positions(
    ids: torch.Tensor, placeholder_id: int, kept: list[torch.Tensor], tokens_per_image: list[int]
) -> torch.Tensor:
    """Positions in one unpadded sequence that survive pruning (see ``kept_token_mask``), ascending."""
    return kept_token_mask(ids, placeholder_id, kept, tokens_per_image).nonzero().flatten()


def left_pad(rows: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack sequences of different lengths, padding on the left as batched generation needs; also the mask."""
    length = max(row.numel() for row in rows)
    input_ids = rows[0].new_full((len(rows), length), pad_id)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long, device=rows[0].device)
    for i, row in enumerate(rows):
        input_ids[i, length - row.numel() :] = row
        attention_mask[i, length - row.numel() :] = 1
    return input_ids, attention_mask

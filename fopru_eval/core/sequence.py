"""Token sequences after pruning: drop the placeholders of pruned visual tokens, then pad the batch again.

Processors expand each image placeholder into one id per visual token, so the LLM input must lose exactly the ids
of the tokens we drop. Sequences are found from ``input_ids`` themselves, never from hard-coded offsets.

Positions. Each kept token may keep the position it had in the unpruned sequence: a 1-D index for LLaVA
(``positions=original``), or Qwen-VL's 3-D M-RoPE (t, h, w) position, where text tokens count up on all three axes, an
image's tokens take their (t, h, w) on the merged grid, and text after an image resumes after the image's largest
position. Then the LLM sees kept visual tokens where they were and the question text exactly where the unpruned model
would see it.
"""

from __future__ import annotations

import torch


def unpad(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
    """The real tokens of each row of a padded batch."""
    return [ids[mask.bool()] for ids, mask in zip(input_ids, attention_mask, strict=True)]


def placeholder_runs(ids: torch.Tensor, placeholder_id: int, tokens_per_image: list[int]) -> list[torch.Tensor]:
    """Per image, the positions of its placeholders in ``ids``: the sequence's placeholders belong to its images in
    order, the first ``tokens_per_image[0]`` to the first image, and so on."""
    positions = (ids == placeholder_id).nonzero().flatten()
    if positions.numel() != sum(tokens_per_image):
        raise ValueError(
            f"the sequence has {positions.numel()} image placeholders, but its images have "
            f"{sum(tokens_per_image)} visual tokens"
        )
    return list(positions.split(tokens_per_image))


def kept_token_mask(
    ids: torch.Tensor, placeholder_id: int, kept: list[torch.Tensor], tokens_per_image: list[int]
) -> torch.Tensor:
    """Which tokens of one unpadded sequence stay: every text token, and the placeholders of kept visual tokens.

    ``kept[i]`` holds the indices (within image i, see ``placeholder_runs``) of the tokens that stay.
    """
    keep = ids != placeholder_id
    runs = placeholder_runs(ids, placeholder_id, tokens_per_image)
    for indices, run in zip(kept, runs, strict=True):
        keep[run[indices.to(run.device)]] = True
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


def generation_position_ids(positions: list[torch.Tensor]) -> torch.Tensor:
    """(4, batch, length) position ids for a left-padded batch, in the layout ``generate`` itself builds for Qwen-VL.

    ``positions[b]`` is the (3, length_b) M-RoPE positions of row b's real tokens. Row 0 of the result holds the text
    positions 0..length_b - 1 (attention masks and flash attention read it), rows 1-3 the M-RoPE positions; padding
    gets 0 everywhere, as in transformers. ``generate`` then gives each new token ``last position + 1`` on all four
    rows, which for M-RoPE is the unpruned sequence's next position: the last prompt token is text, and text
    positions are equal on the three axes and above every earlier token's.
    """
    length = max(p.shape[1] for p in positions)
    position_ids = positions[0].new_zeros((4, len(positions), length))
    for row, p in enumerate(positions):
        start = length - p.shape[1]
        position_ids[0, row, start:] = torch.arange(p.shape[1], device=p.device)
        position_ids[1:, row, start:] = p
    return position_ids

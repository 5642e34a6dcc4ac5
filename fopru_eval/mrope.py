"""M-RoPE position ids for pruned Qwen-VL sequences.

Qwen2-VL and Qwen2.5-VL give every token a 3-D (t, h, w) position: text tokens count up on all three axes, an image's
tokens take their (t, h, w) on the merged grid, and text after an image resumes after the image's largest position.
After pruning, each kept token (text or visual) keeps the 3-D position it had in the unpruned sequence, so the LLM
sees kept visual tokens where they were and the question text exactly where the unpruned model would see it.

Everything here is pure tensor code: it knows nothing about any model or about lmms-eval.
"""

from __future__ import annotations

import torch


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

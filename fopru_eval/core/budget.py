"""How many visual tokens of one view to keep: the paper's floor(N * r), or an absolute budget, at least one."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    """``keep_ratio`` (a fraction in (0, 1]) or ``keep_tokens`` (an integer >= 1), exclusive; neither keeps all."""

    keep_ratio: float | None = None
    keep_tokens: int | None = None

    @property
    def keeps_everything(self) -> bool:
        return self.keep_tokens is None and self.keep_ratio in (None, 1.0)

    def tokens(self, num_tokens: int) -> int:
        """Tokens to keep of a view of ``num_tokens``: floor(N * r) or keep_tokens, at least 1, at most N."""
        if self.keep_tokens is not None:
            return min(self.keep_tokens, num_tokens)
        if self.keep_ratio is None:
            return num_tokens
        return _floor_fraction(num_tokens, self.keep_ratio)

    def rows(self, num_rows: int, num_cols: int) -> int:
        """Whole rows to keep of a (rows, cols) grid: floor(R * r), or as many whole rows as keep_tokens allows;
        at least 1."""
        if self.keep_tokens is not None:
            return max(1, min(num_rows, self.keep_tokens // num_cols))
        if self.keep_ratio is None:
            return num_rows
        return _floor_fraction(num_rows, self.keep_ratio)


def _floor_fraction(n: int, ratio: float) -> int:
    # The small epsilon keeps floor(100 * 0.29) at 29 despite 0.29 having no exact binary form.
    return max(1, min(n, math.floor(n * ratio + 1e-9)))

"""The pruning configuration users type in ``--model_args``, parsed and validated before any weights load."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

STRATEGIES = ("rank", "row", "random", "none")
SIGNIFICANCE_MODES = ("auto", "column", "row")
POSITION_MODES = ("compact", "original")

# Model args that belong to pruning; everything else passes through to the wrapped model.
PRUNING_ARGS = ("strategy", "keep_ratio", "keep_tokens", "significance", "positions", "seed")


class PruningConfigError(ValueError):
    """A pruning argument has a value we do not accept; the message names the argument and the accepted values."""


@dataclass(frozen=True)
class PruningConfig:
    """How many visual tokens to keep per image, and how to choose them.

    ``keep_ratio`` and ``keep_tokens`` are exclusive budgets per image (per view for multi-view models).
    ``strategy="none"`` keeps every token and must reproduce the unpruned model exactly.
    ``positions``: ``compact`` re-indexes the pruned sequence contiguously (the paper's reorder step);
    ``original`` gives each kept token the position id it had before pruning.
    """

    strategy: str
    keep_ratio: float | None = None
    keep_tokens: int | None = None
    significance: str = "auto"
    positions: str = "compact"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise PruningConfigError(
                f"strategy={self.strategy!r} is not supported; accepted values: {', '.join(STRATEGIES)}"
            )
        if self.significance not in SIGNIFICANCE_MODES:
            raise PruningConfigError(
                f"significance={self.significance!r} is not supported; accepted values: {', '.join(SIGNIFICANCE_MODES)}"
            )
        if self.positions not in POSITION_MODES:
            raise PruningConfigError(
                f"positions={self.positions!r} is not supported; accepted values: {', '.join(POSITION_MODES)}"
            )
        if self.keep_ratio is not None and self.keep_tokens is not None:
            raise PruningConfigError(
                "keep_ratio and keep_tokens are exclusive: give keep_ratio (a fraction in (0, 1]) "
                "or keep_tokens (an integer >= 1), not both"
            )
        if self.keep_ratio is not None and not (0.0 < self.keep_ratio <= 1.0):
            raise PruningConfigError(
                f"keep_ratio={self.keep_ratio} is out of range; accepted values: 0 < keep_ratio <= 1"
            )
        if self.keep_tokens is not None and self.keep_tokens < 1:
            raise PruningConfigError(f"keep_tokens={self.keep_tokens} is out of range; accepted values: integers >= 1")
        if self.strategy == "none":
            if self.keep_tokens is not None or self.keep_ratio not in (None, 1.0):
                raise PruningConfigError(
                    "strategy=none keeps every visual token; drop keep_ratio/keep_tokens or set keep_ratio=1"
                )
        elif self.keep_ratio is None and self.keep_tokens is None:
            raise PruningConfigError(
                f"strategy={self.strategy} needs a budget: keep_ratio (a fraction in (0, 1]) "
                "or keep_tokens (an integer >= 1)"
            )

    @classmethod
    def from_model_args(cls, model_args: dict[str, Any]) -> tuple[PruningConfig, dict[str, Any]]:
        """Split lmms-eval model args into a validated config and the args meant for the wrapped model.

        Values may arrive as strings (``--model_args`` is parsed loosely), so they are converted here.
        """
        rest = {k: v for k, v in model_args.items() if k not in PRUNING_ARGS}
        if "strategy" not in model_args:
            raise PruningConfigError(f"strategy is required; accepted values: {', '.join(STRATEGIES)}")
        config = cls(
            strategy=str(model_args["strategy"]),
            keep_ratio=_as_number(model_args, "keep_ratio", float),
            keep_tokens=_as_number(model_args, "keep_tokens", int),
            significance=str(model_args.get("significance", "auto")),
            positions=str(model_args.get("positions", "compact")),
            seed=_as_number(model_args, "seed", int) or 0,
        )
        return config, rest

    def tokens_to_keep(self, num_tokens: int) -> int:
        """Token budget for one image of ``num_tokens`` visual tokens: floor(N * r) or keep_tokens, at least 1."""
        if self.strategy == "none":
            return num_tokens
        if self.keep_tokens is not None:
            return min(self.keep_tokens, num_tokens)
        return _floor_fraction(num_tokens, self.keep_ratio)

    def rows_to_keep(self, num_rows: int, num_cols: int) -> int:
        """Row budget for ``strategy=row``: floor(R * r) rows, or the whole rows keep_tokens allows; at least 1."""
        if self.strategy == "none":
            return num_rows
        if self.keep_tokens is not None:
            return max(1, min(num_rows, self.keep_tokens // num_cols))
        return _floor_fraction(num_rows, self.keep_ratio)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _floor_fraction(n: int, ratio: float) -> int:
    # The small epsilon keeps floor(100 * 0.29) at 29 despite 0.29 having no exact binary form.
    return max(1, min(n, math.floor(n * ratio + 1e-9)))


def _as_number(model_args: dict[str, Any], name: str, kind: type) -> Any:
    value = model_args.get(name)
    if value is None:
        return None
    try:
        number = float(value)
        if kind is int:
            if not number.is_integer():
                raise ValueError
            return int(number)
        return number
    except (TypeError, ValueError):
        expected = "an integer" if kind is int else "a number"
        raise PruningConfigError(f"{name}={value!r} is not {expected}") from None

"""Scorers: the significance of every visual token, from the queries and keys of one vision attention layer.

A scorer is one function ``score(queries, keys, scale, num_prefix_tokens) -> significance``:
  queries, keys       (images, heads, tokens, head_dim), as the layer attends with them (after any rotary embedding);
  scale               the layer's softmax scale (1 / sqrt(head_dim) for every tower here);
  num_prefix_tokens   leading tokens that are not patches (CLIP's CLS token: 1; SigLIP and Qwen towers: 0);
and it returns (images, patches) scores, higher meaning keep, patches in the tower's order. It is chosen with
``significance=`` in ``--model_args``. The hooks that capture queries and keys live with the model families
(``fopru_eval/families/hooks.py``); a scorer never sees a module.

Built in: FoPru's column, row and auto significance of the head-averaged softmax map (``attention.py``). Adding one is
one registration here, or ``significance=my_pkg.scores:my_scorer`` from a user's own code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from fopru_eval.core.attention import fopru_significance
from fopru_eval.core.registry import Registry

ScoreFunction = Callable[[torch.Tensor, torch.Tensor, float, int], torch.Tensor]


@dataclass(frozen=True)
class Scorer:
    name: str
    score: ScoreFunction


SCORERS: Registry[Scorer] = Registry(
    "significance",
    Scorer,
    entry_point_group="fopru_eval.scorers",
    signature=("queries", "keys", "scale", "num_prefix_tokens"),
    wrap=Scorer,
)


def register_scorer(name: str, score: ScoreFunction) -> Scorer:
    return SCORERS.add(name, Scorer(name, score))


# FoPru (section 3.2): column significance (attention a patch receives), row significance (attention it gives), or
# auto, per image whichever varies more (a tie picks row).
for _mode in ("auto", "column", "row"):
    register_scorer(_mode, partial(fopru_significance, mode=_mode))

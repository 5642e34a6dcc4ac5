"""Scorers: the significance of every visual token, from the queries and keys of one vision attention layer.

A scorer is one function ``score(queries, keys, scale, num_prefix_tokens) -> significance``:
  queries, keys       (images, heads, tokens, head_dim), as the layer attends with them (after any rotary embedding);
  scale               the layer's softmax scale (1 / sqrt(head_dim) for every tower here);
  num_prefix_tokens   leading tokens that are not patches (CLIP's CLS token: 1; SigLIP and Qwen towers: 0);
and it returns (images, patches) scores, higher meaning keep, patches in the tower's order. It is chosen with
``significance=`` in ``--model_args``. The hooks that capture queries and keys live with the model families
(``fopru_eval/families/hooks.py``); a scorer never sees a module.

Built in, each in two readings of "attention" (``scores=softmax|logits``, see ``attention.py``): FoPru's ``column``,
``row`` and ``auto`` significance, and ``cls``, the attention the CLS token pays each patch (towers with a CLS token
only). Adding one is one registration here, or ``significance=my_pkg.scores:my_scorer`` from a user's own code (which
reads the attention its own way: ``scores=`` applies to the built-in scorers).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import partial

import torch

from fopru_eval.core.attention import cls_attention, fopru_significance, logit_significance
from fopru_eval.core.registry import Registry

ScoreFunction = Callable[[torch.Tensor, torch.Tensor, float, int], torch.Tensor]
# The two readings of "attention map": the softmax probabilities, or the pre-softmax scaled logits.
READINGS = ("logits", "softmax")


@dataclass(frozen=True)
class Scorer:
    name: str
    score: ScoreFunction
    # A built-in scorer's function per reading (``scores=``); None for a user's scorer, which has one.
    readings: Mapping[str, ScoreFunction] | None = None
    # It reads the CLS token's attention, so it needs a tower with one.
    needs_prefix_token: bool = False

    def reading(self, scores: str) -> Scorer:
        """This scorer reading the attention as ``scores`` says (a user's scorer stays as it is)."""
        return self if self.readings is None else replace(self, score=self.readings[scores])


SCORERS: Registry[Scorer] = Registry(
    "significance",
    Scorer,
    entry_point_group="fopru_eval.scorers",
    signature=("queries", "keys", "scale", "num_prefix_tokens"),
    wrap=Scorer,
)


def register_scorer(
    name: str,
    score: ScoreFunction,
    readings: Mapping[str, ScoreFunction] | None = None,
    needs_prefix_token: bool = False,
) -> Scorer:
    return SCORERS.add(name, Scorer(name, score, readings, needs_prefix_token))


# FoPru (section 3.2): column significance (attention a patch receives), row significance (attention it gives), or
# auto, per image whichever varies more (a tie picks row).
for _mode in ("auto", "column", "row"):
    _readings = {"softmax": partial(fopru_significance, mode=_mode), "logits": partial(logit_significance, mode=_mode)}
    register_scorer(_mode, _readings["softmax"], _readings)
# The CLS token's attention to each patch (VisionZip's dominant tokens, PruMerge), with rank selection.
_readings = {reading: partial(cls_attention, reading=reading) for reading in READINGS}
register_scorer("cls", _readings["softmax"], _readings, needs_prefix_token=True)

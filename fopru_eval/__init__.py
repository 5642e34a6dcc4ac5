"""FoPru (Focal Pruning, arXiv 2411.14164): training-free visual-token pruning for vision-language models.

Layers, each importing only the ones above it in this list:
  ``fopru_eval.core``       pure tensor code: config, strategy and scorer registries, layouts, sequence edits
  ``fopru_eval.families``   one file per Hugging Face model family, and the one ``prune_batch`` driver
  ``fopru_model_adapters``  the lmms-eval wrappers (installed from ``model_adapters/``)
  ``fopru_eval.tools``      commands on top: cli, sweep, curves, bench, checkpoints, demo
"""

from fopru_eval.core import (
    PruningConfig,
    PruningConfigError,
    register_scorer,
    register_strategy,
)

__all__ = ["PruningConfig", "PruningConfigError", "register_scorer", "register_strategy"]
__version__ = "0.1.0"

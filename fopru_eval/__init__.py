"""FoPru (Focal Pruning, arXiv 2411.14164): training-free visual-token pruning for vision-language models.

The core is pure tensor code and knows nothing of lmms-eval or of any one model; the lmms-eval adapters live in
``fopru_model_adapters``.
"""

from fopru_eval.capture import SignificanceCapture
from fopru_eval.config import SIGNIFICANCE_MODES, STRATEGIES, PruningConfig, PruningConfigError
from fopru_eval.selection import select_random, select_rank, select_rows, select_tokens
from fopru_eval.significance import head_averaged_attention, patch_significance

__all__ = [
    "PruningConfig",
    "PruningConfigError",
    "SIGNIFICANCE_MODES",
    "STRATEGIES",
    "SignificanceCapture",
    "head_averaged_attention",
    "patch_significance",
    "select_random",
    "select_rank",
    "select_rows",
    "select_tokens",
]
__version__ = "0.1.0"

"""The pruning core is pure tensor code: it imports without lmms-eval, and without any adapter."""

from __future__ import annotations

import subprocess
import sys

CORE = [
    "config", "significance", "selection", "capture", "sequence", "anyres", "packed_significance", "packed_capture",
    "mrope",
]  # fmt: skip


def test_the_core_imports_with_lmms_eval_unavailable() -> None:
    modules = ", ".join(f"fopru_eval.{name}" for name in CORE)
    program = (
        "import sys\n"
        "sys.modules['lmms_eval'] = None  # any import of it now fails\n"
        "sys.modules['fopru_model_adapters'] = None\n"
        f"import {modules}\n"
        "loaded = [name for name in sys.modules if name.startswith(('lmms_eval.', 'fopru_model_adapters.'))]\n"
        "assert not loaded, loaded\n"
    )
    run = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
